"""On CUDA the per-step work of hd and rtho makes no device sync (skipped without a GPU)."""

import pytest
import torch
import torch.nn.functional as F

from hypergrad_testlib import engine, make_optimizer, model64

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("kind,method", [("sgd", "hd"), ("adam", "hd"), ("sgd", "tangent"), ("adam", "tangent")])
def test_steps_make_no_device_sync(digits, kind, method):
    dev = torch.device("cuda")
    x, y = digits[0][:256].double().to(dev), digits[1][:256].to(dev)
    model = model64().to(dev)
    opt = make_optimizer(kind, model, 0.01, weight_decay=0.01, **({"momentum": 0.9} if kind == "sgd" else {}))
    eng = engine(model, opt, (x[:64], y[:64]))
    eng.configure({"method": method, "mu": 0.9})
    for i in range(2):  # first steps create optimizer state
        opt.zero_grad()
        eng.backward(F.cross_entropy(model(x[:64]), y[:64]))
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(3):
            opt.zero_grad()
            eng.backward(F.cross_entropy(model(x[64 * i:64 * (i + 1)]), y[64 * i:64 * (i + 1)]))
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    report = eng.report()  # one copy to the host here
    assert report["h"] and all(v == v for v in report["h"])
    eng.close()
