"""SimCLR v2 fine-tuning on 1% of the ImageNet labels, the official README's command:

  run.py --train_mode=finetune --fine_tune_after_block=-1 --zero_init_logits_layer=True
    --global_bn=True --optimizer=lars --learning_rate=0.005 --learning_rate_scaling=sqrt
    --weight_decay=0 --train_epochs=60 --train_batch_size=1024 --warmup_epochs=0
    --dataset=imagenet2012_subset/1pct --image_size=224 --ft_proj_selector=1

From a configs/imagenet_v2.py encoder: every layer and the first projection-head layer
trained (ft_proj_selector = 1) with a zero-initialised classifier, LARS
0.005 x sqrt(1024) = 0.16 (classifier outside weight decay and adaptation), B = 1024, no
weight decay, no warm-up, 60 epochs (751 steps), crop + flip, global BN. Released v2
R50-1x: 57.9% top-1 with 1% of the labels (official README table).
"""

from configs import imagenet_finetune_1pct


def get_config():
  c = imagenet_finetune_1pct.get_config()  # the 1% subset, 60 epochs
  c.eval_batch_size = 1024
  ft = c.finetune
  ft.batch_size = 1024
  ft.from_projection_layer = 1
  ft.zero_init_head = True
  ft.optim.update(name="lars", base_lr=0.005, lr_scaling="sqrt", nesterov=False)
  return c
