"""The ControlNet flags of a rendering command (docs/controlnet.md): the units from --control-net,
--control-image and their per-unit values, checked before any model loads, and the units an image
made with ControlNet records for --from-png (AUTOMATIC1111's extension's fields)."""

from pathlib import Path

from sd_cli import log
from sd_cli.errors import UsageError

CONTROL_FLAGS = ("control_net", "control_net_config", "control_preprocess", "control_strength", "guess_mode",
                 "save_hint", "detect_resolution", "annotator_weights")


def control_options(mode: str, args: dict):
    """ControlOptions from the --control-* flags (and --from-png's ControlNet fields), or None without
    --control-image; each unit flag gives one value for every unit or one per --control-net."""
    from sd_cli.control.preprocessors import preprocessor_name
    from sd_cli.control.units import ControlOptions, ControlUnit

    images = args.get("control_image") or []
    if not images:
        given = [_flag_name(name) for name in CONTROL_FLAGS if args.get(name)]
        if given:
            raise UsageError(f"{', '.join(given)} steer with a control image: add --control-image IMG")
        return None
    nets = list(args.get("control_net") or [])
    if nets and len(images) != len(nets):
        raise UsageError(f"{len(nets)} --control-net but {len(images)} --control-image: give one image per ControlNet")
    if not nets and len(images) > 1:
        raise UsageError(f"{len(images)} --control-image but no --control-net: give one --control-net per image "
                         "(a v1.0 ControlNet checkpoint as --ckpt takes one image)")
    _check_files("--control-image", images, "the image the ControlNet follows")
    _check_files("--control-net", nets, "a ControlNet file (control_v11p_sd15_*.pth, .safetensors)")
    count = len(images)
    strengths = _per_unit("--control-strength", args.get("control_strength"), count, 1.0)
    preprocess = [preprocessor_name(name) for name in
                  _per_unit("--control-preprocess", args.get("control_preprocess"), count, "none")]
    for strength in strengths:
        if strength < 0:
            raise UsageError(f"--control-strength {strength} must be 0 or more")
    _check_control_run(mode, args)
    _check_hints(mode, preprocess, args)
    units = tuple(ControlUnit(net, image, name, strength) for net, image, name, strength
                  in zip(nets or [None], images, preprocess, strengths))
    return ControlOptions(units, net_config=args.get("control_net_config"), guess_mode=args["guess_mode"],
                          start=args["control_start"], end=args["control_end"], canny_low=args["canny_low"],
                          canny_high=args["canny_high"], detect_resolution=args.get("detect_resolution"),
                          save_hint=args.get("save_hint"), annotator_weights=args.get("annotator_weights"))


def _check_hints(mode: str, preprocess: list[str], args: dict) -> None:
    """The hint flags' own checks (control/preprocessors.py), before any model loads; --annotator-weights goes
    to the units whose preprocessor needs weights; the inpaint hint takes the inpaint command's mask."""
    from sd_cli.control.preprocessors import NEEDS_MASK, NEEDS_WEIGHTS, SMALLEST_SIDE, check_hint_options

    if "inpaint" in preprocess and mode != "inpaint":
        raise UsageError(NEEDS_MASK)

    weights = args.get("annotator_weights")
    if weights is not None:
        _check_files("--annotator-weights", [weights], "the annotator's weights file")
    for name in preprocess:
        check_hint_options(name, SMALLEST_SIDE, SMALLEST_SIDE, args.get("detect_resolution"), args["canny_low"],
                           args["canny_high"], weights if name in NEEDS_WEIGHTS else None)
    if weights is not None and not any(name in NEEDS_WEIGHTS for name in preprocess):
        check_hint_options(preprocess[0], SMALLEST_SIDE, SMALLEST_SIDE, weights=weights)  # says what it needs


def _check_control_run(mode: str, args: dict) -> None:
    start, end = args["control_start"], args["control_end"]
    if not 0.0 <= start <= end <= 1.0:
        raise UsageError(f"--control-start {start} and --control-end {end}: need 0 <= start <= end <= 1")
    if args.get("save_hint") is not None and args["save_hint"].suffix.lower() != ".png":
        raise UsageError(f"--save-hint {args['save_hint']}: the hint is a PNG; give a name ending in .png")
    if args.get("hires_scale") is not None:
        raise UsageError("--hires-scale with ControlNet is not supported (the second pass would need a hint at "
                         "its own size); drop one of them")
    if args["guess_mode"] and args.get("preview") is not None:
        raise UsageError("--preview reads the batched negative and positive passes, which guess mode runs apart; "
                         "drop --preview or --guess-mode")
    if args.get("server"):
        raise UsageError("--server does not send ControlNet units; render ControlNet runs locally")


def _check_files(flag: str, paths, what: str) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file; pass {what}")


def _per_unit(flag: str, values, count: int, default):
    """One value for every unit, or one per unit."""
    values = list(values or [default])
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise UsageError(f"{len(values)} {flag} for {count} ControlNet unit(s): give one value, or one per --control-net")
    return values


def _flag_name(name: str) -> str:
    """control_net -> --control-net"""
    return "--" + name.replace("_", "-")


def take_png_control(args: dict, explicit) -> None:
    """The recorded ControlNet units' settings (AUTOMATIC1111's extension's fields), unless flags say otherwise;
    the control image and the ControlNet file are not recorded, so a unit needs --control-image again.
    explicit(args, key): whether the flag for key was given on the command line."""
    from sd_cli.files.reading import control_units

    units = control_units(args["from_png"])
    if not units or "control_image" not in args:
        return
    if not args.get("control_image"):
        models = ", ".join(unit.get("Model", "?") for unit in units)
        log.warn(f"{args['from_png']} was made with ControlNet {models}; pass --control-net and --control-image "
                 "to use it again")
        return
    try:
        recorded = _recorded_control(units)
    except ValueError as err:
        raise UsageError(f"{args['from_png']}: recorded ControlNet field {err}") from None
    for key, value in recorded.items():
        if value is not None and not explicit(args, key):
            args[key] = value


def _recorded_control(units: list[dict]) -> dict:
    """CLI option values from the recorded units: per-unit lists, and the shared settings from unit 0."""
    first = units[0]

    def number(key: str, kind=float):
        return kind(float(first[key])) if key in first else None

    return {"control_preprocess": [unit.get("Module", "none") for unit in units],
            "control_strength": [float(unit.get("Weight", 1.0)) for unit in units],
            "control_start": number("Guidance Start"), "control_end": number("Guidance End"),
            "canny_low": number("Threshold A", int), "canny_high": number("Threshold B", int),
            "detect_resolution": number("Processor Res", int),
            "guess_mode": first.get("Control Mode") == "ControlNet is more important"}
