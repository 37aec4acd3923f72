"""The ``studio`` command.

    studio                                  open the app
    studio open WORKFLOW [--screenshot PNG] [--run]
    studio run WORKFLOW [--set NODE.PARAM=VALUE ...] [--out DIR] [--events]
    studio batch WORKFLOW --out DIR [--sweep NODE.PARAM=a,b] [--prompts FILE] [--seeds 1-9]
    studio validate WORKFLOW
    studio export WORKFLOW --to comfyui-api OUT.json
    studio nodes [--markdown]
    studio verify IMAGE... [--json] [--trust CA.pem]

WORKFLOW may also be a ComfyUI workflow or prompt (JSON), or a PNG carrying one.

Exit codes: 0 success, 1 a node failed (or the run was interrupted), 2 an invalid
workflow or a usage mistake. A user's mistake never prints a Python traceback.
``studio verify``: 0 every image has a valid C2PA manifest, 1 one has none or an invalid
one, 2 one is not an image.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_NODE_FAILED, EXIT_INVALID = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"studio: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="studio", description="Node-graph image workflows with diffusion models.")
    from studio.about import version_line

    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command")

    op = sub.add_parser("open", help="open a workflow in the app")
    op.add_argument("workflow", nargs="?")
    op.add_argument("--screenshot", metavar="PNG", help="save a screenshot once painted, then exit")
    op.add_argument("--run", action="store_true", help="run the workflow, then screenshot")

    rp = sub.add_parser("run", help="run a workflow headless")
    rp.add_argument("workflow")
    rp.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="set a param before running; NODE is a node id or a unique title",
    )
    rp.add_argument("--out", metavar="DIR", help="folder for output images")
    rp.add_argument("--events", action="store_true", help="print every event as a JSON line")
    rp.add_argument(
        "--verbose", action="store_true", help="let the libraries print their own bars and warnings"
    )

    from studio.batch.cli import add_batch_parser

    add_batch_parser(sub)

    vp = sub.add_parser("validate", help="check a workflow and list every problem")
    vp.add_argument("workflow")

    ep = sub.add_parser("export", help="write a workflow in another tool's format")
    ep.add_argument("workflow")
    ep.add_argument("--to", required=True, choices=["comfyui-api"], help="the format to write")
    ep.add_argument("out", metavar="OUT.json")

    vf = sub.add_parser("verify", help="check images' provenance (C2PA manifest, watermark)")
    vf.add_argument("images", nargs="+", metavar="IMAGE")
    vf.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    vf.add_argument("--trust", metavar="CA.pem", help="trust this CA (e.g. Studio's local CA)")

    np_ = sub.add_parser("nodes", help="list the node types")
    np_.add_argument("--markdown", action="store_true", help="print reference docs in Markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if argv and argv[0] not in commands and not argv[0].startswith("-") and os.path.isfile(argv[0]):
        argv = ["open", *argv]  # `studio FILE`: how file managers and the Dock open a file
    args = parser.parse_args(argv)
    if args.command in (None, "open"):
        from studio.app.main import run_app

        if args.command is None:
            return run_app()
        return run_app(args.workflow, screenshot=args.screenshot, run=args.run)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "run":
        code = cmd_run(args.workflow, args.sets, args.out, args.events, args.verbose)
        # The process ends now: its last garbage collection would walk every object of
        # torch, diffusers and transformers (most of a second) to free nothing that exit
        # does not free anyway. Frozen objects are left out of it (gc.freeze's purpose).
        gc.freeze()
        return code
    if args.command == "batch":
        from studio.batch.cli import cmd_batch

        return cmd_batch(args)
    if args.command == "validate":
        return cmd_validate(args.workflow)
    if args.command == "export":
        return cmd_export(args.workflow, args.to, args.out)
    if args.command == "nodes":
        return cmd_nodes(args.markdown)
    if args.command == "verify":
        from studio.provenance.cli import cmd_verify

        return cmd_verify(args.images, as_json=args.json, trust=args.trust)
    return EXIT_INVALID


def _err(message: str) -> None:
    print(f"studio: {message}", file=sys.stderr)


def _load(path: str) -> Any:
    from studio.errors import WorkflowFileError
    from studio.graph.fileformat import open_any
    from studio.graph.importers.a1111 import model_finder
    from studio.library import installed_registry
    from studio.modelfiles import ModelFiles
    from studio.settings import Settings

    try:
        finder = model_finder(ModelFiles(Settings.load()))
        return open_any(path, installed_registry(), find_model=finder).workflow
    except WorkflowFileError as exc:
        _err(str(exc))
        return None


def parse_set(wf: Any, assignment: str) -> tuple[str, str, Any]:
    """Split ``NODE.PARAM=VALUE`` and convert VALUE to the param's type."""
    from studio.errors import WorkflowEditError
    from studio.graph.types import ValueType

    target, sep, raw = assignment.partition("=")
    node_ref, dot, param = target.rpartition(".")
    if not sep or not dot or not node_ref or not param:
        raise WorkflowEditError(f"--set {assignment!r}: expected NODE.PARAM=VALUE")
    node = wf.find_node(node_ref)
    spec = wf.spec_of(node)
    inp = spec.input(param) if spec else None
    value: Any = raw
    if inp is not None:
        try:
            if inp.type is ValueType.INT:
                value = int(raw)
            elif inp.type is ValueType.FLOAT:
                value = float(raw)
            elif inp.type is ValueType.BOOLEAN:
                low = raw.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = low in ("true", "1", "yes", "on")
        except ValueError:
            raise WorkflowEditError(
                f"--set {assignment!r}: {param!r} of {wf.display_title(node)} expects "
                f"{inp.type.value.lower()}, got {raw!r}"
            ) from None
    return node.id, param, value


def cmd_run(
    path: str, sets: list[str], out: str | None, events: bool, verbose: bool = False
) -> int:
    from studio.terminal import TerminalProgress, quiet_libraries

    if not verbose:
        quiet_libraries()  # before torch, diffusers and transformers are imported
    from studio.engine import Engine, WorkflowInvalid
    from studio.errors import StudioError
    from studio.fsutil import writable_folder
    from studio.graph.fileformat import dumps_workflow
    from studio.settings import Settings

    wf = _load(path)
    if wf is None:
        return EXIT_INVALID
    try:
        for assignment in sets:
            node_id, param, value = parse_set(wf, assignment)
            wf.set_param(node_id, param, value)
    except StudioError as exc:
        _err(str(exc))
        return EXIT_INVALID

    try:
        # What the run would save must be writable as a file: refuse it now, not after
        # the run (Save Image embeds the workflow in every PNG).
        dumps_workflow(wf, path=path)
    except StudioError as exc:
        _err(str(exc))
        return EXIT_INVALID

    settings = Settings.load()
    if out:
        settings.output_dir = str(Path(out).resolve())
    try:
        writable_folder(settings.output_path, what="the output folder")
    except StudioError as exc:
        _err(str(exc))
        return EXIT_INVALID

    engine = Engine(wf.registry, settings=settings)
    # On a terminal (and without --events): the node that runs, a progress bar, the times.
    display = None
    if not events and sys.stdout.isatty():
        from studio.engine.validate import plan_workflow

        plan = plan_workflow(wf, wf.registry, model_files=engine.model_files)
        display = TerminalProgress(sys.stdout, total=len(plan.order))

    def on_event(event: Any) -> None:
        if events:
            print(json.dumps(event.to_json()), flush=True)
        elif display is not None:
            display(event)

    try:
        result = engine.run(wf, on_event=on_event)
    except WorkflowInvalid as exc:
        _err(f"{path}: the workflow cannot run:")
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        if display is not None:
            display._status("")
        _err("interrupted")
        return EXIT_NODE_FAILED

    try:
        written = _write_unsaved_images(result, settings.output_path, wf, settings, engine.files)
    except OSError as exc:
        _err(f"cannot write the images to {settings.output_path}: {exc.strerror or exc}")
        return EXIT_NODE_FAILED
    if not events:
        for p in written:
            print(p)
    from studio.graph.naming import node_name

    for node_id, message in result.errors.items():
        _err(f"{node_name(wf, node_id)} failed: {message}")
    if result.interrupted:
        _err("the run was interrupted")
        return EXIT_NODE_FAILED
    return EXIT_NODE_FAILED if result.errors else EXIT_OK


def _write_unsaved_images(
    result: Any, folder: Path, workflow: Any = None, settings: Any = None, files: Any = None
) -> list[str]:
    """Paths of the images output nodes saved, writing those only previewed to ``folder``
    (as Save Image would: with the workflow and the provenance the settings ask for)."""
    from studio.fsutil import atomic_write_bytes, unique_path
    from studio.provenance.cli import preview_bytes

    written = []
    for image in result.images:
        info = getattr(image, "info", None)
        if not isinstance(info, dict) or not hasattr(image, "save"):
            continue
        saved = info.get("studio_path")
        if saved:
            written.append(str(saved))
            continue
        target = unique_path(folder, "preview", ".png")
        atomic_write_bytes(target, preview_bytes(image, result, workflow, settings, files))
        written.append(str(target))
    return written


def cmd_validate(path: str) -> int:
    from studio.engine.validate import plan_workflow
    from studio.modelfiles import ModelFiles
    from studio.settings import Settings

    wf = _load(path)
    if wf is None:
        return EXIT_INVALID
    problems = plan_workflow(wf, wf.registry, model_files=ModelFiles(Settings.load())).problems
    if not problems:
        print(f"{path}: ok ({len(wf.nodes)} nodes, {len(wf.links)} links)")
        return EXIT_OK
    for problem in problems:
        print(problem)
    return EXIT_INVALID


def cmd_export(path: str, to: str, out: str) -> int:
    from studio.errors import StudioError
    from studio.graph.importers.comfyui_export import write_comfyui_api

    wf = _load(path)
    if wf is None:
        return EXIT_INVALID
    try:
        write_comfyui_api(wf, out, path=path)
    except StudioError as exc:
        _err(str(exc))
        return EXIT_INVALID
    except OSError as exc:
        _err(f"cannot write {out}: {exc.strerror or exc}")
        return EXIT_INVALID
    print(out)
    return EXIT_OK


def cmd_nodes(markdown: bool) -> int:
    from studio.library import installed_registry

    reg = installed_registry()
    specs = sorted(reg, key=lambda s: (s.category, s.title))
    for err in reg.load_errors:
        _err(err)
    if not markdown:
        for s in specs:
            print(f"{s.type_id:24} {s.category:14} {s.title}")
        return EXIT_OK
    print("# Node reference\n")
    for s in specs:
        print(f"## {s.title} (`{s.type_id}`, v{s.version})\n")
        print(f"Category: {s.category}. {s.description}\n")
        if s.inputs:
            print("| input | type | default | range / choices | description |")
            print("|---|---|---|---|---|")
            for i in s.inputs:
                rng = ""
                if i.min is not None or i.max is not None:
                    rng = f"{i.min if i.min is not None else ''} .. {i.max if i.max is not None else ''}"
                elif i.choices is not None and not callable(i.choices):
                    rng = ", ".join(i.choices)
                elif i.file_kind:
                    rng = f"a file from {i.file_kind}"
                default = "" if i.default is None else json.dumps(i.default)
                print(f"| `{i.name}` | {i.type} | {default} | {rng} | {i.tooltip} |")
            print()
        if s.outputs:
            print("Outputs: " + ", ".join(f"`{o.name}` ({o.type})" for o in s.outputs) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
