"""The gateway benchmark refuses to print throughput ratios when its load generator is the bottleneck."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "gateway_overhead.py"


def _module():
    spec = importlib.util.spec_from_file_location("gateway_overhead_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(direct_rps, truecost_rps, litellm_rps=None, gen="wrk"):
    r = {
        "direct": {"c64": {"rps": direct_rps, "load_generator": gen}},
        "truecost": {"c64": {"rps": truecost_rps}},
        "truecost_secured": {"c64": {"rps": truecost_rps * 0.9}},
    }
    if litellm_rps is not None:
        r["litellm"] = {"c64": {"rps": litellm_rps}}
    return r


def test_a_saturated_load_generator_is_named_and_no_ratio_is_given():
    mod = _module()
    # a Python load generator that reaches ~140/s even straight to the mock: the gateway also shows ~140/s
    why = mod.load_bottleneck(_result(141.0, 139.0, 70.0, gen="bench/loadgen.py"))
    assert why is not None and "bench/loadgen.py" in why and "141" in why


def test_headroom_on_the_direct_path_lets_the_ratios_through():
    mod = _module()
    assert mod.load_bottleneck(_result(3100.0, 1400.0, 95.0)) is None
    # the bound is the fastest gateway measured, whichever it is
    assert mod.load_bottleneck(_result(3100.0, 1400.0, 2500.0)) is not None
