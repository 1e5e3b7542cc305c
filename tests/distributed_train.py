"""Run by tests/test_training_distributed.py under `accelerate launch`: train, then write what
each rank holds (a hash of every parameter and the metrics) so the test can compare ranks."""
import hashlib
import json
import sys
from pathlib import Path

from accelerate import PartialState

from modeling_scegg.training import parse_training_args, run_pipeline
from modeling_scegg.training import runner as runner_module

captured = {}
original = runner_module.RunContext


def capturing_context(*args, **kwargs):
    context = original(*args, **kwargs)
    captured["model"] = context.model
    return context


runner_module.RunContext = capturing_context
results = run_pipeline(parse_training_args(sys.argv[1:]))
state = PartialState()
digest = hashlib.sha256()
for name, tensor in sorted(captured["model"].state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
out = Path(parse_training_args(sys.argv[1:]).output_dir)
(out / f"rank_{state.process_index}.json").write_text(json.dumps(
    {"hash": digest.hexdigest(), "results": {k: results[k] for k in ("czsl_acc", "gzsl_h", "num_test_seen", "num_test_unseen")},
     "num_processes": state.num_processes}))
