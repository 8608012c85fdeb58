"""Train the demo checkpoint shipped in refute/data/demo/ (see refute/demo_model.py).

A small Llama (`transformers.LlamaForCausalLM`, default RoPE, no biases, SiLU, tied embeddings:
a configuration refute loads) trained on CPU with torch, on text that ships with the Python
interpreter itself — nothing is downloaded:

* the Zen of Python (`this.s`, decoded),
* the help topics of the language reference (`pydoc_data.topics.topics`, sorted by name),
* the docstrings of a fixed, sorted list of standard-library modules and of their public
  classes, functions and methods (`inspect.cleandoc`, each distinct docstring once).

The tokenizer is a byte-level BPE trained on the same text with `tokenizers`. Everything is
seeded and the budget is a fixed number of steps, so a re-run on the same Python version
(the docstrings change between versions) and the same torch build gives the same corpus hash
and, up to the nondeterminism of the CPU kernels, the same weights.

    .venv/bin/python scripts/train_demo_model.py            # writes refute/data/demo/
    .venv/bin/python scripts/train_demo_model.py --steps 20 --out /tmp/demo   # smoke run
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "refute" / "data" / "demo"
EOT = "<|endoftext|>"

MODULES = sorted(
    """
    abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmd code codecs collections
    collections.abc colorsys concurrent.futures configparser contextlib contextvars copy csv
    dataclasses datetime decimal difflib dis doctest email.message enum filecmp fileinput fnmatch
    fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html
    html.parser http.client http.cookies http.server imaplib importlib inspect io ipaddress
    itertools json keyword linecache locale logging lzma mailbox math mimetypes multiprocessing
    netrc numbers operator optparse os os.path pathlib pickle pkgutil platform plistlib poplib
    pprint profile pstats queue quopri random re reprlib runpy sched secrets selectors shelve
    shlex shutil signal smtplib socket socketserver sqlite3 stat statistics string struct
    subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit
    token tokenize trace traceback types typing unicodedata unittest unittest.mock urllib.parse
    urllib.request uuid warnings wave weakref wsgiref xml.dom.minidom xml.etree.ElementTree
    xmlrpc.client zipfile zlib
    """.split()
)

MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    initializer_range=0.02,
)


# --- corpus ------------------------------------------------------------------------------------


def _docstring(obj) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc).strip() if isinstance(doc, str) else None


def _defined_in(obj, module) -> bool:
    """Whether `obj` belongs to `module` (re-exports from elsewhere are skipped; a C accelerator
    `_heapq` counts as `heapq`)."""
    owner = getattr(obj, "__module__", None)
    return module.__name__ == "builtins" or (
        isinstance(owner, str) and owner.lstrip("_") == module.__name__.lstrip("_")
    )


def stdlib_docstrings() -> list[str]:
    """Each module's docstring, then those of its public members (sorted by name) and of their
    public methods, in order, each distinct docstring of 20 characters or more once."""
    seen: set[str] = set()
    docs: list[str] = []

    def add(obj) -> None:
        doc = _docstring(obj)
        if doc and len(doc) >= 20 and doc not in seen:
            seen.add(doc)
            docs.append(doc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            module = importlib.import_module(name)
            add(module)
            for attr in sorted(dir(module)):
                if attr.startswith("_"):
                    continue
                obj = getattr(module, attr, None)
                if inspect.ismodule(obj) or not _defined_in(obj, module):
                    continue
                add(obj)
                if inspect.isclass(obj):
                    for member_name, member in sorted(vars(obj).items()):
                        if member_name.startswith("_") and member_name != "__init__":
                            continue
                        if isinstance(member, staticmethod | classmethod):
                            member = member.__func__
                        if callable(member) or isinstance(member, property):
                            add(member)
    return docs


def build_corpus() -> list[str]:
    """The documents, in a fixed order."""
    from pydoc_data.topics import topics

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # prints the Zen on import; its text is this.s, rot13-encoded

    zen = codecs.decode(this.s, "rot13")
    return [zen] + [topics[key].strip() for key in sorted(topics)] + stdlib_docstrings()


# --- tokenizer ---------------------------------------------------------------------------------


def train_tokenizer(documents: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


# --- training ----------------------------------------------------------------------------------


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, data: torch.Tensor, context: int, batches: int = 8, batch: int = 32) -> float:
    """Mean loss over fixed, evenly spaced windows of `data`."""
    model.eval()
    windows = (len(data) - context - 1) // context
    starts = torch.linspace(0, windows - 1, batches * batch).long() * context
    losses = []
    for chunk in starts.split(batch):
        x = torch.stack([data[s : s + context] for s in chunk])
        y = torch.stack([data[s + 1 : s + context + 1] for s in chunk])
        logits = model(x).logits
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=1100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine, two OpenMP threads were 12x slower than one
    # (each barrier waits for a thread that another process has descheduled)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="stored weights"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    documents = build_corpus()
    text = f"\n{EOT}\n".join(documents)
    corpus_bytes = text.encode()
    corpus_sha = hashlib.sha256(corpus_bytes).hexdigest()
    print(f"corpus: {len(documents)} documents, {len(corpus_bytes):,} bytes, sha256 {corpus_sha}")

    tokenizer = train_tokenizer(documents, args.vocab_size)
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for doc in documents:
        ids += [*tokenizer.encode(doc).ids, eot]
    data = torch.tensor(ids, dtype=torch.long)
    split = int(len(data) * 0.95)
    train, valid = data[:split], data[split:]
    print(
        f"tokenizer: byte-level BPE, {tokenizer.get_vocab_size()} tokens; "
        f"{len(data):,} tokens ({len(corpus_bytes) / len(data):.2f} bytes/token), "
        f"{len(train):,} train / {len(valid):,} held out"
    )

    context = MODEL_CONFIG["max_position_embeddings"]
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=None,
        eos_token_id=eot,
        pad_token_id=None,
        **MODEL_CONFIG,
    )
    model = transformers.LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)
    warmup = max(1, args.steps // 20)
    model.train()
    t0 = time.perf_counter()
    smoothed = None
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup)
        starts = torch.randint(0, len(train) - context - 1, (args.batch_size,), generator=generator)
        x = torch.stack([train[s : s + context] for s in starts])
        y = torch.stack([train[s + 1 : s + context + 1] for s in starts])
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.3f}")
    bar.close()
    seconds = time.perf_counter() - t0

    model.eval()
    train_loss = evaluate(model, train, context)
    valid_loss = evaluate(model, valid, context)
    stored_dtype = getattr(torch, args.dtype)
    model = model.to(stored_dtype)
    stored_valid = evaluate(model.float(), valid, context)
    model = model.to(stored_dtype)
    print(
        f"trained {args.steps} steps in {seconds:.0f} s; loss (fp32): train {train_loss:.4f}, "
        f"held out {valid_loss:.4f}; held out with {args.dtype} weights {stored_valid:.4f}"
    )

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    for stray in ("generation_config.json",):
        (out / stray).unlink(missing_ok=True)
    command = "python scripts/train_demo_model.py " + " ".join(sys.argv[1:])
    (out / "README.md").write_text(
        readme(
            args=args,
            command=command.strip(),
            documents=len(documents),
            corpus_bytes=len(corpus_bytes),
            corpus_sha=corpus_sha,
            tokens=len(data),
            vocab=tokenizer.get_vocab_size(),
            params=params,
            seconds=seconds,
            losses=(train_loss, valid_loss, stored_valid),
        )
    )
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    print(json.dumps(sizes))


def readme(
    *, args, command, documents, corpus_bytes, corpus_sha, tokens, vocab, params, seconds, losses
) -> str:
    train_loss, valid_loss, stored_valid = losses
    cfg = "\n".join(f"  - {k}: {v}" for k, v in MODEL_CONFIG.items())
    context = MODEL_CONFIG["max_position_embeddings"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"""# refute demo model

A {params:,}-parameter Llama (`LlamaForCausalLM`, vocabulary {vocab}) trained by
`scripts/train_demo_model.py` so that `refute run` prints readable text. It writes
documentation-flavoured English and Python; it knows nothing else and is not useful for anything
but demonstrations and tests.

Training text: only text that ships with the Python interpreter ({platform.python_version()}),
no download — the Zen of Python (`this.s`), the help topics of the language reference
(`pydoc_data.topics`) and the docstrings of {len(MODULES)} standard-library modules and their
public members (see the script for the list). {documents} documents, {corpus_bytes:,} bytes,
sha256 `{corpus_sha}`; {tokens:,} tokens, the last 5% held out.

Tokenizer: byte-level BPE (`tokenizers`), {vocab} tokens including `{EOT}` (id 0, between
documents; also the config's `eos_token_id`). No BOS token is added.

- model config:
{cfg}
- command: `{command}`
- seed: {args.seed}; {args.steps} steps of AdamW (peak lr {args.lr}, warm-up then cosine to 10%,
  weight decay 0.1, clip 1.0, fp32), batch {args.batch_size} x {context} tokens,
  {args.threads} CPU thread(s), torch {torch.__version__}, transformers
  {transformers.__version__}
- training time: {seconds:.0f} s on {platform.machine()}, {os.cpu_count()} cores shared with other
  jobs (load average at the end: {load})
- final loss (fp32, nats/token): train {train_loss:.4f}, held out {valid_loss:.4f};
  held out with the stored {args.dtype} weights {stored_valid:.4f}
- stored weights: {args.dtype}
- date: {datetime.date.today().isoformat()}
"""


if __name__ == "__main__":
    main()
