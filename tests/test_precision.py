"""--dtype bfloat16: bf16 compute over float32 master weights (train/precision.py)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from preftune.cli import main
from preftune.train.precision import MasterWeights
from test_preference import common, pairs


def test_master_weights_accumulate_step_and_release():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    net[1].requires_grad_(False)                       # a frozen part is cast too, but has no master
    with torch.no_grad():
        net[0].weight[0, 0] = 1.0
    original = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[0].weight
    mw = MasterWeights(net)
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert list(mw.masters) == ["0.weight", "0.bias"]
    master = mw.masters["0.weight"]
    assert master.dtype == torch.float32 and torch.equal(master, original["0.weight"])
    opt = torch.optim.SGD(mw.masters.values(), lr=1.0)

    x = torch.randn(2, 4, 8, dtype=torch.bfloat16)
    grads = []
    for xb in x:                                       # two micro-batches, summed in float32
        net(xb).sum().backward()
        grads.append(weight.grad.float())
        mw.accumulate()
        assert weight.grad is None
    torch.testing.assert_close(master.grad, grads[0] + grads[1])
    with torch.no_grad():
        master.grad[0, 0] = -1e-4                      # an update below bf16 resolution at 1.0
    opt.step()
    mw.copy_to_model()
    expected = original["0.weight"] - (grads[0] + grads[1])
    expected[0, 0] = 1.0 + 1e-4
    torch.testing.assert_close(master, expected, atol=1e-6, rtol=0)
    assert master[0, 0] != 1.0                         # kept by the master ...
    assert weight[0, 0] == 1.0                         # ... lost in the bf16 copy
    assert net[0].weight is weight and torch.equal(weight, expected.bfloat16())

    mw.release()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net[0].weight, master)


@pytest.mark.slow
def test_bf16_dpo_learns_saves_float32_masters_and_resumes_exactly(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(150))
    args = ["--dtype", "bfloat16", "--lr", "1e-3", "--beta", "0.1", "--lr_scheduler", "constant", "--seed", "3"]
    full = tmp_path / "full"
    assert main(["dpo", *common(tiny_model, data, full, "--max_steps", "40", "--save_steps", "20", *args)]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["eval"]["rewards/accuracies"] >= 0.9, summary["eval"]

    weights = load_file(full / "final" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    w = weights["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(w, w.bfloat16().float()), "final/ holds bf16-rounded weights, not the float32 masters"
    ckpt = load_file(full / "checkpoints" / "step-20" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in ckpt.values())

    resumed = tmp_path / "resumed"                   # a run that stopped at its step-20 checkpoint
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-20", resumed / "checkpoints" / "step-20")
    assert main(["dpo", *common(tiny_model, data, resumed, "--max_steps", "40", "--save_steps", "20", *args,
                                "--resume", "true")]) == 0
    again = load_file(resumed / "final" / "model.safetensors")
    assert max(float((weights[k] - again[k]).abs().max()) for k in weights) <= 1e-6
