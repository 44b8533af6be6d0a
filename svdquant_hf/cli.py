"""The ``svdquant-hf`` command line: quantize, inspect, publish, convert, demo, bench."""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

from .config import QUANT_FORMATS

DESCRIPTION = """SVDQuant 4-bit (W4A4) quantization for diffusion models, native to Hugging Face.

Typical flow:  quantize -> info -> push.  Checkpoints are diffusers folders (safetensors only) that
load with from_pretrained after `import svdquant_hf`."""

EPILOG = """examples:
  # data-free INT4 quantization of a pipeline's denoiser (local folder or Hub id)
  svdquant-hf quantize black-forest-labs/FLUX.1-schnell --out flux-schnell-svdq
  # calibrated (smoothing searched on real activations) with 64 prompts of PartiPrompts, 4 steps each
  svdquant-hf quantize ./flux-dev --out flux-dev-svdq --calibrate PartiPrompts.tsv --num-prompts 64 --steps 4
  # what a checkpoint holds (no weights are loaded; Hub ids fetch only configs and headers)
  svdquant-hf info flux-dev-svdq
  # preview, then publish with a generated model card
  svdquant-hf push flux-dev-svdq my-user/flux-dev-svdquant --private --dry-run
  svdquant-hf push flux-dev-svdq my-user/flux-dev-svdquant --private
  # Nunchaku checkpoints <-> svdquant-hf
  svdquant-hf import-nunchaku svdq-int4_r32-flux.1-dev.safetensors --out flux-dev-from-nunchaku
  svdquant-hf export-nunchaku flux-dev-svdq/transformer --out transformer-nunchaku-lite

Run `svdquant-hf COMMAND --help` for each command's options."""

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _options(args: argparse.Namespace) -> Any:
    from . import SVDQuantConfig

    return SVDQuantConfig(
        rank=args.rank, group_size=args.group_size, quant_format=args.format, weight_only=args.weight_only,
        modules_to_not_convert=args.skip or None, alpha=args.alpha, alpha_grid=args.alpha_grid,
        calib_tokens=args.calib_tokens, joint_qkv=args.joint_qkv,
    )


def _model_kind_hub(model: str, revision: str | None, token: str | None) -> tuple[str, dict[str, Any]]:
    from huggingface_hub import hf_hub_download

    for kind, name in (("pipeline", "model_index.json"), ("model", "config.json")):
        try:
            path = hf_hub_download(model, name, revision=revision, token=token)
        except Exception as e:  # missing file -> try the next; anything else is reported
            if type(e).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                continue
            raise CLIError(f"{model}: cannot read {name} from the Hub ({type(e).__name__}: {e})") from None
        return kind, json.loads(Path(path).read_text())
    raise CLIError(f"{model}: the Hub repo has neither model_index.json nor config.json")


def _resolve_kind(model: str, revision: str | None, token: str | None) -> tuple[str, dict[str, Any]]:
    p = Path(model)
    if p.exists():
        for kind, name in (("pipeline", "model_index.json"), ("model", "config.json")):
            if (p / name).is_file():
                return kind, json.loads((p / name).read_text())
        raise CLIError(f"{model}: not a diffusers folder (neither model_index.json nor config.json)")
    from svdquant_hf.hub_scripts.model_card import is_hub_id

    if not is_hub_id(model):
        raise CLIError(f"{model}: no such folder, and not a Hub repo id ('namespace/name')")
    return _model_kind_hub(model, revision, token)


def _diffusers_class(name: str | None) -> Any:
    import diffusers

    cls = getattr(diffusers, name or "", None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise CLIError(f"model class {name!r} is not a diffusers class (custom code is never run)")
    return cls


_LIBRARIES = ("diffusers", "transformers", "tokenizers")
_DENOISERS = ("transformer", "unet", "prior", "decoder")


def _dense_bytes(module: Any) -> int:
    """The size ``module`` has with every SVDQuantLinear replaced by the dense 16-bit nn.Linear it came from."""
    from .modules import SVDQuantLinear

    sd = module.state_dict()
    total = sum(t.numel() * t.element_size() for t in sd.values())
    for name, m in module.named_modules():
        if isinstance(m, SVDQuantLinear):
            own = [t for k, t in sd.items() if k.rpartition(".")[0] == name]
            total -= sum(t.numel() * t.element_size() for t in own)
            item = m.proj_up.element_size()
            total += (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)) * item
    return total


def _check_known_classes(kind: str, cfg: dict[str, Any], model: str) -> None:
    """Refuse checkpoints whose classes would come from code shipped with the checkpoint."""
    _diffusers_class(cfg.get("_class_name"))
    if kind != "pipeline":
        return
    for name, spec in cfg.items():
        if name.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue
        if spec[0] not in _LIBRARIES:
            raise CLIError(
                f"{model}: component {name!r} is {spec[0]}.{spec[1] if len(spec) > 1 else '?'}, not a diffusers/"
                f"transformers class; svdquant-hf never runs code shipped with a checkpoint"
            )


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from svdquant_hf.hub_scripts.info import SIDE_CAR
    from svdquant_hf.hub_scripts.model_card import is_hub_id

    from . import __version__

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CLIError(f"{out} exists and is not empty; choose another --out or pass --force")
    dtype = getattr(torch, _DTYPES[args.dtype])
    kind, cfg = _resolve_kind(args.model, args.revision, None)
    _check_known_classes(kind, cfg, args.model)
    options = _options(args)
    load_kw = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    if args.revision:
        load_kw["revision"] = args.revision
    calibration = None
    original_bytes: dict[str, int] = {}
    if kind == "pipeline":
        from diffusers import DiffusionPipeline

        from . import SVDQuantConfig
        from .pipeline import load_prompts, quantize_pipeline

        comps = list(args.components or [])
        denoiser = next((c for c in _DENOISERS if isinstance(cfg.get(c), list) and cfg[c][0]), None)
        if denoiser is None and not comps:
            raise CLIError(f"{args.model}: no denoiser ({'/'.join(_DENOISERS)}) found; name --components")
        target = (comps[0] if comps else denoiser) if args.calibrate else None
        on_load = [c for c in (comps or [denoiser]) if c != target]  # data-free: quantized while loading
        kw = dict(load_kw)
        if on_load:
            kw["quantization_config"] = SVDQuantConfig(**options.options_dict(), components_to_quantize=on_load)
        print(f"Loading pipeline {args.model} ({cfg.get('_class_name')}) in {args.dtype}"
              + (f", quantizing {', '.join(on_load)} data-free" if on_load else "") + " ...", file=sys.stderr)
        pipe = DiffusionPipeline.from_pretrained(args.model, **kw)
        if args.calibrate:
            n_prompts = len(load_prompts(args.calibrate, args.num_prompts))
            quantize_pipeline(
                pipe, options, prompts_path=args.calibrate, num_prompts=args.num_prompts,
                num_inference_steps=args.steps, component=target, device=args.device,
                **({"height": args.size, "width": args.size} if args.size else {}),
            )
            calibration = {"dataset": Path(args.calibrate).name, "num_prompts": n_prompts,
                           "num_inference_steps": args.steps, "component": target}
        for c in comps or [denoiser]:
            module = getattr(pipe, c, None)
            if isinstance(module, torch.nn.Module):
                original_bytes[c] = _dense_bytes(module)
        pipe.save_pretrained(out, safe_serialization=True)
    else:
        if args.calibrate:
            raise CLIError("--calibrate needs a pipeline (prompts drive the denoiser); MODEL is a single model")
        cls = _diffusers_class(cfg.get("_class_name"))
        print(f"Loading and quantizing {args.model} ({cls.__name__}) ...", file=sys.stderr)
        model = cls.from_pretrained(args.model, quantization_config=options, **load_kw)
        model.save_pretrained(out, safe_serialization=True)
    side = {
        "base_model": args.base_model or (args.model if is_hub_id(args.model) and not Path(args.model).exists() else None),
        "calibration": calibration,
        "original_bytes": original_bytes or None,  # 16-bit size (in --dtype) of each quantized component
        "svdquant_hf_version": __version__,
    }
    (out / SIDE_CAR).write_text(json.dumps(side, indent=2) + "\n")
    print(f"Wrote {out}. Next: `svdquant-hf info {out}` and `svdquant-hf push {out} USER/REPO --dry-run`.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from svdquant_hf.hub_scripts.info import describe_hub, describe_local, format_info
    from svdquant_hf.hub_scripts.model_card import is_hub_id

    if Path(args.path).exists():
        info = describe_local(args.path)
    elif is_hub_id(args.path):
        info = describe_hub(args.path, revision=args.revision)
    else:
        raise CLIError(f"{args.path}: no such file or folder, and not a Hub repo id ('namespace/name')")
    print(json.dumps(info.to_dict(), indent=2, default=str) if args.json else format_info(info))
    return 0


def _read_quality(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"--quality {path}: expected a JSON object of metric -> value ({e})") from None
    if not isinstance(data, dict):
        raise CLIError(f"--quality {path}: expected a JSON object of metric -> value")
    return data


def cmd_push(args: argparse.Namespace) -> int:
    from svdquant_hf.hub_scripts.push import publish

    plan, result = publish(
        args.folder, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        dry_run=args.dry_run, overwrite=args.overwrite, commit_message=args.message, base_model=args.base_model,
        license=args.license, quality=_read_quality(args.quality),
    )
    print(plan.describe())
    if args.dry_run:
        print("Dry run: nothing was uploaded.")
        if plan.conflicts and not args.overwrite:
            print(f"Note: {len(plan.conflicts)} file(s) exist in the repo; the real push needs --overwrite.")
    else:
        url = getattr(result, "pr_url", None) or getattr(result, "commit_url", None) or result
        print(f"Uploaded: {url}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from svdquant_hf.hub_scripts.info import describe_local
    from svdquant_hf.hub_scripts.model_card import build_model_card

    info = describe_local(args.folder)
    card = build_model_card(info, args.repo_id, base_model=args.base_model, license=args.license,
                            quality=_read_quality(args.quality))
    dest = Path(args.folder) / "README.md"
    if dest.exists() and not args.force:
        raise CLIError(f"{dest} exists; pass --force to replace it")
    card.save(dest)
    print(f"Wrote {dest}")
    return 0


def _download_nunchaku(repo_id: str, filename: str | None, revision: str | None) -> Path:
    """Fetch only the safetensors (and config.json) a Nunchaku import needs from a Hub repo."""
    from huggingface_hub import hf_hub_download

    from .interop.nunchaku import LEGACY_FILES

    if filename:
        if not filename.endswith(".safetensors"):
            raise CLIError(f"--filename {filename}: only .safetensors files are read")
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    paths = [Path(hf_hub_download(repo_id, f, revision=revision)) for f in LEGACY_FILES]
    try:
        hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as e:  # legacy repos may lack it: then --config is needed
        if type(e).__name__ not in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
            raise
    return paths[0].parent


def cmd_import_nunchaku(args: argparse.Namespace) -> int:
    from svdquant_hf.hub_scripts.model_card import is_hub_id

    from .interop.nunchaku import import_nunchaku

    config = json.loads(Path(args.config).read_text()) if args.config else None
    src = Path(args.src)
    if not src.exists():
        if not is_hub_id(args.src):
            raise CLIError(f"{args.src}: no such file or folder, and not a Hub repo id")
        src = _download_nunchaku(args.src, args.filename, args.revision)
    out = import_nunchaku(src, args.out, config=config, validate=not args.no_validate)
    print(f"Wrote {out}")
    return 0


def cmd_export_nunchaku(args: argparse.Namespace) -> int:
    from .interop.nunchaku import export_nunchaku_lite

    out = export_nunchaku_lite(args.src, args.out)
    print(f"Wrote {out} (diffusers quant_method 'nunchaku_lite')")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from . import demo
    except ImportError as e:
        raise CLIError(f"the demo is not available in this installation ({e})") from None
    return int(demo.main(args.args) or 0)


def _benchmarks_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    return here if here.is_dir() else None


def cmd_bench(args: argparse.Namespace) -> int:
    root = _benchmarks_dir()
    if root is None:
        raise CLIError("benchmarks/ ships with the source checkout, not the installed package")
    scripts = sorted(p.stem for p in root.glob("*.py") if not p.name.startswith("_"))
    if not args.name:
        print("benchmarks: " + ", ".join(scripts) + "\nrun: svdquant-hf bench NAME [-- ARGS]")
        return 0
    if args.name not in scripts:
        raise CLIError(f"unknown benchmark {args.name!r}; available: {', '.join(scripts)}")
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    old = sys.argv
    sys.argv = [str(root / f"{args.name}.py"), *rest]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = old
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="svdquant-hf", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("quantize", help="quantize a pipeline or model and save it pre-quantized", formatter_class=fmt,
                       description="Quantize MODEL (local folder or Hub id) and write a pre-quantized diffusers folder.",
                       epilog="examples:\n  svdquant-hf quantize ./flux-schnell --out flux-schnell-svdq\n"
                              "  svdquant-hf quantize ./flux-dev --out out --calibrate prompts.txt --num-prompts 32 --steps 4\n"
                              "  svdquant-hf quantize ./pipe --out out --components transformer text_encoder_2 --rank 64")
    q.add_argument("model", help="local diffusers folder (pipeline or model) or Hub repo id")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--calibrate", metavar="PROMPTS_FILE", help="calibrate on prompts (one per line, or a TSV with a "
                   "'Prompt' column such as PartiPrompts.tsv); without it quantization is data-free")
    q.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts of the file")
    q.add_argument("--steps", type=int, default=None, help="denoising steps per calibration prompt")
    q.add_argument("--size", type=int, default=None, help="calibration image height/width")
    q.add_argument("--components", nargs="+", help="pipeline components to quantize (default: the denoiser)")
    q.add_argument("--rank", type=int, default=32, help="low-rank branch rank (default 32)")
    q.add_argument("--group-size", type=int, default=64, help="INT4 group size: 32, 64 or 128 (default 64)")
    q.add_argument("--format", default="auto", choices=(*QUANT_FORMATS, "auto"),
                   help="4-bit format (default auto: int4_2l on Hopper GPUs, else int4): int4 = per-group 16-bit scales; int4_2l = INT4 with "
                        "two-level scales (fp32 per channel x 4-bit integer per group, for Hopper's exact int8 "
                        "GEMM); nvfp4 = reference path only")
    q.add_argument("--weight-only", action="store_true", help="W4A16: quantize weights only")
    q.add_argument("--joint-qkv", action="store_true",
                   help="quantize each attention's q/k/v as one layer at 3x the rank, so that "
                        "svdquant_hf.fuse_shared_input_projections can run them as one GEMM after loading")
    q.add_argument("--alpha", type=float, default=None,
                   help="fixed smoothing exponent in [0, 1] (default: searched per layer when calibrating)")
    q.add_argument("--alpha-grid", type=int, default=20, help="grid points of the per-layer alpha search (default 20)")
    q.add_argument("--calib-tokens", type=int, default=1024, help="activation rows kept per layer (default 1024)")
    q.add_argument("--skip", nargs="+", metavar="PATTERN", help="module names/globs to keep in 16 bits")
    q.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES), help="compute dtype (default bf16)")
    q.add_argument("--device", default=None, help="device for quantizing layers (default: cuda when available)")
    q.add_argument("--revision", default=None, help="Hub revision of MODEL")
    q.add_argument("--base-model", default=None, help="Hub id of the original model, for the model card")
    q.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="describe a checkpoint without loading its weights", formatter_class=fmt,
                       epilog="examples:\n  svdquant-hf info flux-dev-svdq\n  svdquant-hf info my-user/flux-dev-svdquant --json")
    i.add_argument("path", help="local folder / safetensors file, or a Hub repo id (fetches configs + headers only)")
    i.add_argument("--revision", default=None)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    p = sub.add_parser("push", help="publish a folder to the Hub with a generated model card", formatter_class=fmt,
                       description="Create REPO_ID if needed and upload FOLDER. Existing files are never replaced "
                                   "without --overwrite. The token comes from `hf auth login` or HF_TOKEN.",
                       epilog="examples:\n  svdquant-hf push out my-user/flux-svdq --dry-run\n"
                              "  svdquant-hf push out my-user/flux-svdq --private --base-model black-forest-labs/FLUX.1-dev\n"
                              "  svdquant-hf push out my-user/flux-svdq --create-pr --overwrite --message 'new rank'")
    p.add_argument("folder")
    p.add_argument("repo_id", help="namespace/name")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--dry-run", action="store_true", help="show what would be uploaded; upload nothing")
    p.add_argument("--overwrite", action="store_true", help="allow replacing files that exist in the repo")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--base-model", default=None, help="Hub id of the original model (card metadata, license)")
    p.add_argument("--license", default=None, help="license id (default: inherited from the base model)")
    p.add_argument("--quality", default=None, metavar="JSON", help="JSON file of metric -> value for the card")
    p.set_defaults(func=cmd_push)

    c = sub.add_parser("card", help="write README.md (model card) into a checkpoint folder", formatter_class=fmt)
    c.add_argument("folder")
    c.add_argument("--repo-id", required=True, help="the repo id used in the loading snippet")
    c.add_argument("--base-model", default=None)
    c.add_argument("--license", default=None)
    c.add_argument("--quality", default=None, metavar="JSON")
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_card)

    n = sub.add_parser("import-nunchaku", help="convert a Nunchaku checkpoint to svdquant-hf", formatter_class=fmt,
                       description="SRC: Nunchaku single-file .safetensors, legacy folder (transformer_blocks + "
                                   "unquantized_layers), or a diffusers nunchaku_lite folder; or a Hub repo id. "
                                   "INT4 only.",
                       epilog="examples:\n  svdquant-hf import-nunchaku svdq-int4_r32-flux.1-dev.safetensors --out flux-dev\n"
                              "  svdquant-hf import-nunchaku some-org/svdq-int4-model --filename model.safetensors --out m")
    n.add_argument("src", help="local file/folder, or a Hub repo id (downloads only the safetensors + config)")
    n.add_argument("--out", required=True)
    n.add_argument("--filename", default=None, help="with a Hub repo id: the single-file checkpoint to fetch, "
                   "e.g. svdq-int4_r32-flux.1-dev.safetensors (default: the legacy folder files)")
    n.add_argument("--revision", default=None)
    n.add_argument("--config", default=None, help="diffusers config.json, when SRC carries none")
    n.add_argument("--no-validate", action="store_true",
                   help="skip checking the converted tensors against the diffusers model of the config")
    n.set_defaults(func=cmd_import_nunchaku)

    e = sub.add_parser("export-nunchaku", help="convert an svdquant-hf model or pipeline folder to diffusers' "
                       "nunchaku_lite layout",
                       formatter_class=fmt)
    e.add_argument("src", help="model folder (e.g. PIPELINE/transformer) or pipeline folder, INT4 group 64; "
                   "in a pipeline the SVDQuant components are converted and the others copied")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export_nunchaku)

    d = sub.add_parser("demo", add_help=False, help="quantize, save, reload and compare a pipeline "
                       "(default: a small random one, offline); `svdquant-hf demo --help` for its options")
    d.add_argument("args", nargs=argparse.REMAINDER)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="run a script of benchmarks/ (source checkout)")
    b.add_argument("name", nargs="?")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return ap


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("svdquant-hf")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # every option belongs to the demo's own parser
        args = argparse.Namespace(command="demo", func=cmd_demo, args=argv[1:])
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from .hub_scripts.info import NotACheckpointError
    from .hub_scripts.push import PushError
    from .interop.checkpoint_io import CheckpointError

    try:
        return args.func(args)
    except (CLIError, PushError, NotACheckpointError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"svdquant-hf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
