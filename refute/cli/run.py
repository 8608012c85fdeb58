"""`refute run`, `verify-trace`, `verify-step` and `conformance`: one inference, its trace, one
step on chain, and the arithmetic against its vectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from refute.cli import main
from refute.cli.options import (
    _announce_compiles,
    _hex,
    _parse_tokens,
    backend_option,
    progress_bar,
    seed_option,
)


@main.command()
@click.option(
    "--vectors",
    "vector_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="conformance vectors to replay (default: tests/vectors if "
    "present, else a fresh in-memory generation)",
)
@click.option(
    "--stride",
    default=65537,
    show_default=True,
    help="measure ulp errors on every STRIDE-th of the 2^32 inputs",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def conformance(vector_dir: Path | None, stride: int, as_json: bool) -> None:
    """Check the canonical-arithmetic reference against its conformance vectors and measure
    the accuracy of its derived functions."""
    from refute.kernels import accuracy, vectors
    from refute.kernels.reference import SPEC_VERSION

    if vector_dir is None and Path("tests/vectors").is_dir():
        vector_dir = Path("tests/vectors")
    records = vectors.load(vector_dir) if vector_dir else vectors.generate()
    source = str(vector_dir) if vector_dir else "generated in memory"
    results = vectors.replay(records)
    reports = []
    for name in tqdm(accuracy.DERIVED, desc="ulp sample", unit="fn", disable=as_json):
        reports.append(accuracy.measure(name, stride=stride, offset=stride // 3))
    failed = sorted(n for n, (ok, total) in results.items() if ok != total)
    if as_json:
        print(
            json.dumps(
                {
                    "spec_version": SPEC_VERSION,
                    "vectors": source,
                    "results": {n: {"passed": ok, "cases": t} for n, (ok, t) in results.items()},
                    "ulp": {
                        r.name: {
                            "max_ulp_normal": r.max_ulp_normal,
                            "max_subnormal_error": r.max_ulp_subnormal,
                            "inputs": r.inputs,
                        }
                        for r in reports
                    },
                    "ok": not failed,
                }
            )
        )
    else:
        click.echo(f"canonical arithmetic, spec version {SPEC_VERSION}; vectors: {source}")
        click.echo(f"{'function':<12} {'cases':>7}  result")
        for name, (ok, total) in results.items():
            click.echo(f"{name:<12} {total:>7}  {'ok' if ok == total else f'{total - ok} FAILED'}")
        click.echo(f"\nworst error on {reports[0].inputs} inputs (every {stride}th pattern):")
        for r in reports:
            click.echo(
                f"{r.name:<12} {r.max_ulp_normal:8.3f} ulp   subnormal results: "
                f"{r.max_ulp_subnormal:.3f} x 2^-149"
            )
        total = sum(t for _, t in results.values())
        click.echo(
            f"\n{total} cases in {len(results)} files: "
            + ("all match" if not failed else f"mismatches in {', '.join(failed)}")
        )
    sys.exit(1 if failed else 0)


@main.command()
@click.option(
    "--model",
    "model_name",
    default="tiny-llama",
    show_default=True,
    help="built-in model (tiny-llama, tiny-gpt2) or Hugging Face checkpoint directory",
)
@click.option("--prompt-tokens", default=None, help="prompt as comma-separated token ids")
@click.option(
    "--prompt",
    "prompt_text",
    default=None,
    help="prompt text (needs a checkpoint with tokenizer.json)",
)
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="0 = greedy; otherwise Gumbel-max sampling with --seed",
)
@seed_option
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the trace (msgpack) here",
)
@backend_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def run(
    model_name: str,
    prompt_tokens: str | None,
    prompt_text: str | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    trace_path: Path | None,
    backend_name: str | None,
    as_json: bool,
) -> None:
    """Run a model on a prompt with a committed, Merkleized trace; print tokens and roots."""
    import time

    from refute.engine import backends, tracefile
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor, Request, summary
    from refute.errors import RefuteError

    try:
        t0 = time.perf_counter()
        model = load_model(model_name)
        _ = model.root  # commit the weights now, so the timings separate it
        t_load = time.perf_counter() - t0
        if prompt_text is not None:
            if model.tokenizer is None:
                raise click.UsageError(f"{model_name} has no tokenizer: use --prompt-tokens")
            prompt = tuple(model.tokenizer.encode(prompt_text).ids)
        elif prompt_tokens is not None:
            prompt = _parse_tokens(prompt_tokens)
        else:
            prompt = (1, 2, 3)
        request = Request(prompt, max_new_tokens, temperature, seed)
        backend = backends.make(backend_name)
        _announce_compiles(backend)
        executor = Executor(model, backend=backend)
        t1 = time.perf_counter()
        with progress_bar(total=request.positions, desc="positions", unit="pos",
                          disable=as_json) as bar:  # fmt: skip
            (gen,) = executor.generate([request], on_position=bar.update)
        t_run = time.perf_counter() - t1
        if trace_path is not None:
            tracefile.write(trace_path, model, gen)
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    info = summary(gen, model)
    text = model.tokenizer.decode(gen.output_tokens) if model.tokenizer is not None else None
    timings = {
        "load_and_commit_weights_s": round(t_load, 4),
        "generate_s": round(t_run, 4),
        "evaluate_s": round(executor.seconds["evaluate"], 4),
        "commit_s": round(executor.seconds["commit"], 4),
        "commit_background_s": round(executor.seconds["commit_background"], 4),
        "tokens_per_s": round(max_new_tokens / t_run, 3),
    }
    if as_json:
        out = {k: (_hex(v) if isinstance(v, bytes) else v) for k, v in info.items()}
        out |= {
            "model": model.name,
            "backend": backend.name,
            "prompt": list(prompt),
            "text": text,
            "timings": timings,
            "trace_file": str(trace_path) if trace_path else None,
        }
        click.echo(json.dumps(out))
        return
    click.echo(
        f"model      {model.name}  ({model.num_parameters:,} parameters, "
        f"{len(model.program.nodes)} nodes per position)"
    )
    click.echo(f"prompt     {list(prompt)}")
    click.echo(f"tokens     {gen.output_tokens}")
    if text is not None:
        click.echo(f"text       {text!r}")
    for key in ("model_root", "weights_root", "program_root", "prompt_root", "trace_root"):
        click.echo(f"{key:<13}{_hex(info[key])}")
    click.echo(f"records    {info['records']} ({request.positions} positions)")
    if trace_path:
        click.echo(f"trace file {trace_path}")
    click.echo("timings    " + ", ".join(f"{k} {v}" for k, v in timings.items()))


@main.command("verify-trace")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_name",
    default=None,
    help="model to re-execute with (default: the one the trace names)",
)
@backend_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def verify_trace(
    path: Path, model_name: str | None, backend_name: str | None, as_json: bool
) -> None:
    """Re-execute a trace file and confirm its trace root, or name the first differing record
    (exit status 1)."""
    from refute.engine import backends, tracefile
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor
    from refute.errors import RefuteError

    try:
        claimed = tracefile.read(path)
        model = load_model(model_name or claimed.header["model"])
        if model.root != claimed.header["model_root"]:
            raise click.ClickException(
                f"model root mismatch: the trace names {_hex(claimed.header['model_root'])}, "
                f"{model.name} has {_hex(model.root)}"
            )
        request = claimed.request
        with progress_bar(total=request.positions, desc="re-executing", unit="pos") as bar:
            backend = backends.make(backend_name)
            _announce_compiles(backend)
            executor = Executor(model, backend=backend)
            (gen,) = executor.generate([request], on_position=bar.update)
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    diff = claimed.trace.first_difference(gen.trace)
    if as_json:
        out = {"ok": diff is None and gen.output_tokens == claimed.tokens,
               "trace_root": _hex(gen.trace.root()), "claimed_root": _hex(claimed.trace.root()),
               "records": gen.trace.num_records, "tokens": gen.output_tokens,
               "claimed_tokens": claimed.tokens, "first_difference": None}  # fmt: skip
        if diff is not None:
            node = model.program.nodes[diff[1]]
            out["first_difference"] = {"position": diff[0], "node_id": diff[1], "node": node.name}
        click.echo(json.dumps(out))
        sys.exit(0 if out["ok"] else 1)
    if diff is None and gen.output_tokens == claimed.tokens:
        click.echo(
            f"ok: trace root {_hex(gen.trace.root())} confirmed "
            f"({gen.trace.num_records} records, tokens {gen.output_tokens})"
        )
        return
    if diff is None:
        click.echo(
            f"MISMATCH: records agree but tokens differ: file {claimed.tokens}, "
            f"re-execution {gen.output_tokens}"
        )
        sys.exit(1)
    position, node_id = diff
    node = model.program.nodes[node_id]
    click.echo(
        f"MISMATCH at position {position}, node {node_id} ({node.name}, "
        f"{node.op.name.lower()} {node.fn.name.lower()}): the first record that differs"
    )
    sys.exit(1)


@main.command("verify-step")
@click.option("--model", "model_name", default="tiny-llama", show_default=True)
@click.option("--prompt-tokens", default="1,2,3", show_default=True)
@click.option("--max-new-tokens", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0))
@seed_option
@click.option("--position", default=-1, show_default=True, help="-1: the last position")
@click.option(
    "--node", "node_ref", default="lm_head", show_default=True, help="node name or id of the record"
)
@click.option("--element", default=0, show_default=True)
@click.option(
    "--leaf",
    default=None,
    type=int,
    help="reduction leaf k (default: the element's "
    "value itself for MAP/cache nodes, leaf 0 for reductions)",
)
@click.option(
    "--rpc",
    "rpc_url",
    default=None,
    help="JSON-RPC URL of a node (default: an embedded py-evm chain)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def verify_step(
    model_name: str,
    prompt_tokens: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    position: int,
    node_ref: str,
    element: int,
    leaf: int | None,
    rpc_url: str | None,
    as_json: bool,
) -> None:
    """Run a model, then have the on-chain OneStepVerifier re-execute one scalar step of its
    trace: the true value must be accepted and a value one bit off rejected."""
    from refute.contracts.onestep import OneStepClient, StepProver
    from refute.engine.checkpoint import load_model
    from refute.engine.executor import Executor, Request
    from refute.engine.ir import Op
    from refute.errors import RefuteError

    try:
        model = load_model(model_name)
        program = model.program
        node_id = int(node_ref) if node_ref.isdigit() else program.node_index(node_ref)
        if not 0 <= node_id < len(program.nodes):
            raise click.BadParameter(f"node {node_id} outside the program", param_hint="--node")
        executor = Executor(model)
        request = Request(_parse_tokens(prompt_tokens), max_new_tokens, temperature, seed)
        (gen,) = executor.generate([request])
        t = position if position >= 0 else gen.trace.positions - 1
        node = program.nodes[node_id]
        if node.op in (Op.MAP, Op.CACHE_APPEND):
            call = StepProver(model, executor, gen).step(t, node_id, element)
        else:
            call = StepProver(model, executor, gen).step(t, node_id, element, leaf=leaf or 0)
        client = OneStepClient(rpc_url)
        value, index = client.compute(call)
        accepted = client.verify(call)
        rejected = not client.verify(call, value=call.value ^ 1)
        fn = client.verifier.functions.verifyStep(*call.args, call.value, call.index)
        gas = fn.estimate_gas()
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    ok = value == call.value and index == call.index and accepted and rejected
    out = {
        "chain": rpc_url or "embedded", "position": t, "node": node_id, "name": node.name,
        "step": call.label, "element": element, "leaf": call.leaf,
        "expected_bits": f"0x{call.value:08x}", "contract_bits": f"0x{value:08x}",
        "index": index, "true_value_accepted": accepted, "one_bit_off_rejected": rejected,
        "gas": gas, "ok": ok,
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(out))
    else:
        for key, val in out.items():
            click.echo(f"{key:<22}{val}")
    sys.exit(0 if ok else 1)
