"""Train SC-EGG stage by stage with Accelerate.

    python examples/train_stages.py                      # built-in synthetic data, a few minutes on CPU
    accelerate launch examples/train_stages.py --dataset CUB --data_dir DIR \
        --output_dir OUT   # CUB's default preset; --config NAME to choose
    python examples/train_stages.py --help               # every flag
"""
import sys

from modeling_scegg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
