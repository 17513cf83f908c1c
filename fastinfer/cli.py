"""The `fastinfer` command line: `fastinfer demo [...]` runs the end-to-end demo and
`fastinfer info` reports what this CPU offers, which kernels serve calls, and whether this build has
the CUDA kernels."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

# Feature flags first, then the verdicts, so `info` reads from evidence to conclusion.
_FEATURES = ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_vbmi",
             "avx512_bf16",
             "amx_tile", "amx_int8", "os_avx", "os_avx512", "os_amx")
_VERDICTS = ("detected", "implemented", "runnable", "active", "env_cap", "env_cap_error", "amx_note")


def _info() -> int:
    import torch

    import fastinfer

    caps = fastinfer.cpu_capabilities()
    print(f"fastinfer {fastinfer.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"vendor: {caps.get('vendor', '?')}")
    feats = [k for k in _FEATURES if k in caps]
    print("features:")
    for k in feats:
        print(f"  {k:<14} {'yes' if caps[k] else 'no'}")
    # Keys this list does not know yet (a newer extension) are still shown, not dropped.
    rest = [k for k in caps if k not in feats and k not in _VERDICTS and k != "vendor"]
    for k in rest:
        print(f"  {k:<14} {caps[k]}")
    print("ISA:")
    for k in _VERDICTS:
        if k == "env_cap" and caps.get(k) is None:
            print(f"  {k:<14} none (FASTINFER_ISA={'|'.join(fastinfer.ISAS)} caps it)")
        elif k == "amx_note" and not caps.get(k):
            if caps.get("amx_int8"):
                print(f"  {k:<14} none (AMX usable)")
        elif k in caps:
            v = caps[k]
            print(f"  {k:<14} {', '.join(v) if isinstance(v, list) else v}")
    from . import ops
    build = ops.BUILD
    gpu = torch.cuda.get_device_name(0) if ops.cuda_available() else "none visible"
    print("CUDA:")
    print(f"  {'kernels':<14} {'built (sm_80, sm_90a)' if build['cuda'] else 'not in this build (a CPU torch)'}")
    print(f"  {'cutlass_sm90':<14} {'yes' if build['cutlass_sm90'] else 'no'}")
    print(f"  {'gpu':<14} {gpu}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastinfer", description="fastinfer: int8 inference kernels for PyTorch")
    sub = p.add_subparsers(dest="command", metavar="{demo,info}", required=True)
    # add_help=False: `fastinfer demo --help` must reach the demo's own parser, which owns its options.
    sub.add_parser("demo", add_help=False, help="train an MLP on digits, quantize it, compare accuracy/latency/size "
                                                "(see `fastinfer demo --help`)")
    sub.add_parser("info", help="show the CPU features found and the ISA the kernels use")
    # parse_known_args leaves the demo's options to the demo, so they are declared in one place only.
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "demo":
        from . import demo  # imported here so `fastinfer info` does not need scikit-learn

        demo.main(rest)
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return _info()


if __name__ == "__main__":
    sys.exit(main())
