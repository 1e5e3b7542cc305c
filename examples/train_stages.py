"""Train SC-EGG stage by stage with Accelerate.

    python examples/train_stages.py                      # built-in synthetic data, a few minutes on CPU
    accelerate launch examples/train_stages.py --dataset CUB --data_dir DIR \
        --config hub_configs/cub-official.json --output_dir OUT
    python examples/train_stages.py --help               # every flag
"""
import sys

from modeling_scegg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
