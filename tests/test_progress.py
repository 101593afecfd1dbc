"""The pretraining console line: durations, percentages, and the compiling first step
kept out of the rate and the ETA."""

import re

from simclr_jax import progress


def test_format_duration():
  seconds = (0, 45.4, 108, 3600 + 5 * 60 + 9, 3 * 86400 + 4 * 3600)
  assert [progress.format_duration(s) for s in seconds] == [
      "0s", "45s", "1m48s", "1h05m", "3d04h"]


def test_first_step_is_kept_out_of_rate_and_eta(monkeypatch):
  clock = iter([0.0, 30.0, 31.0, 33.0])  # start, first step ready (compile), step 5, step 9
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  p = progress.Progress(batch_size=64, start_step=0, total_steps=20)
  p.first_step_done(1)
  rates = p.rates(5)  # 4 steps in 1 s after the first step
  assert rates == {"images_per_s": 256.0, "eta_minutes": 15 * 0.25 / 60}
  line = p.line(5, {**rates, "loss": 4.57606, "learning_rate": 0.0125, "grad_norm": 3.0})
  assert line == ("step 5/20 (25%)  ETA 4s  256 img/s  loss 4.576  lr 0.0125  "
                  "(first step, compiling: 30s)")
  rates = p.rates(9)  # 4 steps in 2 s
  assert rates["images_per_s"] == 128.0
  assert p.line(9, {**rates, "loss": 4.0}) == "step 9/20 (45%)  ETA 6s  128 img/s  loss 4"


def test_window_of_the_first_step_alone_says_compiling(monkeypatch):
  clock = iter([0.0, 12.0])
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  p = progress.Progress(batch_size=8, start_step=10, total_steps=100)
  p.first_step_done(11)
  assert p.rates(11) == {}
  assert re.fullmatch(r"step 11/100 \(11%\)  loss 1  \(first step, compiling: 12s\)",
                      p.line(11, {"loss": 1.0}))


def test_summary_line_done_or_stopped():
  assert progress.summary_line(330, 330, 724, 4.38372, "w/checkpoints/330") == (
      "Pretraining done: 330 steps in 12m04s, last loss 4.384; checkpoint w/checkpoints/330")
  assert progress.summary_line(40, 330, 59.6, None, "w/checkpoints/40") == (
      "Pretraining stopped at step 40/330 in 1m00s; checkpoint w/checkpoints/40")
