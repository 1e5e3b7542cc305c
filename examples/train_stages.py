"""Train SC-EGG stage by stage with Accelerate, on one process or many.

    python examples/train_stages.py                      # built-in synthetic data, a few minutes on CPU
    accelerate launch examples/train_stages.py --dataset CUB --data_dir DIR --output_dir OUT
    accelerate launch --multi_gpu --num_processes 4 examples/train_stages.py ...
    python examples/train_stages.py --help               # every flag (the same as `scegg train`)

A run has one `Accelerator`; each stage prepares on it only the networks it trains, checkpoints
them every `--checkpoint_every` steps and releases them when it ends; `--resume true` continues a
killed run where it stopped.
"""
import sys

from modeling_scegg.openmp import configure_openmp

configure_openmp()  # before the imports below load torch: libgomp reads its settings once

from modeling_scegg.cli import configure_logging, format_results  # noqa: E402
from modeling_scegg.training import (  # noqa: E402
    choose_on_validation,
    finish_run,
    load_data,
    parse_training_args,
    run_classifiers,
    run_stage1,
    run_stage2,
    run_stage3,
    start_run,
)


def main(argv=None) -> int:
    # Every flag of `scegg train`. A preset (--config, else the dataset's default one) sets
    # their defaults; flags given on the command line win.
    args = parse_training_args(argv, prog="train_stages.py")
    configure_logging()

    # Region features as memory-mapped Arrow splits plus the class semantics (attribute matrix,
    # seen / unseen classes, attribute word vectors), converted once by the main process.
    data = load_data(args)

    # What must not be chosen on test data is chosen on the validation view (val classes as
    # pseudo-unseen), in a whole run of its own: the calibrated-stacking offset and, with
    # --selection validation, the classifier (and stage-3) epochs.
    args, choice = choose_on_validation(args, data)

    # The model, sized from the data, with the class semantics installed (or, with --resume,
    # the newest snapshot; stages it already finished are skipped below).
    run = start_run(args, data, choice)

    # Stage 1, the SCEN: attribute attention over regions (Eq. 1-3) and semantic compression
    # (Eq. 4-5), trained with L_S1 = L_LCE + lambda_g L_GCE (Eq. 6, 7, 16). Then the dense
    # features g and local scores p_l of every image are cached: the SCEN is frozen from here.
    run_stage1(run)

    # Stage 2: the global head CLS_g learns to reproduce p_l from g with L_SCR (Eq. 8, 17).
    run_stage2(run)

    # Stage 3, the EGGN: TF-VAEGAN learns to synthesise g from class attributes with L_VG
    # (Eq. 9-12), guided by the frozen CLS_g through L_EGS (Eq. 13-15): L_S3 (Eq. 18).
    run_stage3(run)

    # The final classifiers: real seen g plus synthetic unseen g for GZSL, synthetic unseen g
    # for CZSL; the test splits are scored once, after the last epoch.
    run_classifiers(run)

    # The model (safetensors, remote code, image processor), results.json, plots and the model
    # card in --output_dir, pushed to the Hub with --push_to_hub.
    results = finish_run(run)
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
