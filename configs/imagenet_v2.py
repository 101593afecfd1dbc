"""ImageNet pretraining, SimCLR v2 (Chen et al. 2020b) as the official README's command:

  run.py --train_mode=pretrain --train_batch_size=4096 --train_epochs=100
    --temperature=0.1 --learning_rate=0.075 --learning_rate_scaling=sqrt
    --weight_decay=1e-4 --dataset=imagenet2012 --image_size=224

ResNet-50, B = 4096, 100 epochs as that command (31,279 steps; the v2 paper trains 800:
--config.num_epochs=800), LARS 0.075 x sqrt(B) = 4.8, weight decay 1e-4, tau = 0.1, 10
warm-up epochs, 3-layer projection head (fine-tuning starts from its first layer:
configs/imagenet_v2_finetune_1pct.py), multiplicative brightness jitter
(jitter_impl "simclrv2"), colour strength 1.0, blur, global BN, the official objective.
Released v2 R50-1x checkpoint (800 epochs): 71.7% linear-eval top-1.
"""

from configs import imagenet


def get_config():
  c = imagenet.get_config()
  c.augment.jitter_impl = "simclrv2"
  c.model.head_num_layers = 3
  c.optim.weight_decay = 1e-4
  return c
