"""A character-level LSTM trained with Alrao: no learning rate to tune, only an interval.

    python examples/char_lstm.py [--steps 600] [--out runs/char_lstm]

The text ships with every Python: the docstrings of a fixed list of standard-library modules and
of their public classes and functions (``stdlib_text()``), a few hundred kB of English prose with
code fragments. It needs no .py sources, only the imported modules (it is empty under
``python -OO``, which strips docstrings: then the example says so and stops). Its exact content
varies a little between Python versions.

The model: Embedding -> LSTM (the pre-classifier: every embedding column, every gate row gets its
own LR drawn log-uniformly in [--lr-min, --lr-max]) -> ``--n-classifiers`` copies of the decoder
with log-spaced LRs, mixed by the Switch. Truncated back-propagation through time over
``--bptt`` characters, hidden state carried across batches; the pre-classifier's gradient norm
is clipped (``--clip``) as in the original's RNN script.

Prints the training loss (nats and bits per character) as it goes and the validation loss at the
end; writes ``summary.json`` (losses, validation loss, Switch posterior, a text sample) to --out.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from autolrs.optim import AlraoModel, AlraoSGD, LinearClassifierRNN, alrao_step

# Modules present in every CPython install (no optional C extensions like tkinter or sqlite3).
TEXT_MODULES = ["argparse", "collections", "functools", "itertools", "json", "textwrap", "string", "re",
                "pathlib", "os", "shutil", "logging", "subprocess", "dataclasses", "inspect",
                "unittest", "heapq", "bisect", "random", "statistics", "fractions", "decimal", "datetime",
                "calendar", "csv", "difflib", "pickle", "copy", "enum", "abc", "contextlib", "threading",
                "queue", "socket", "email.message", "http.client", "urllib.parse", "zipfile", "tarfile"]


def stdlib_text(modules: list[str] = TEXT_MODULES) -> str:
    """The docstrings of ``modules`` and of their public classes, functions and methods, in a
    fixed order (module list order, then member names sorted)."""
    parts: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a stripped-down install; the text is just shorter
            continue
        parts.append(inspect.cleandoc(mod.__doc__ or ""))
        for member_name, member in sorted(vars(mod).items()):
            if member_name.startswith("_") or getattr(member, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(member) or inspect.isfunction(member):
                parts.append(inspect.cleandoc(member.__doc__ or ""))
            if inspect.isclass(member):
                for _, method in sorted(vars(member).items()):
                    if inspect.isfunction(method) and not method.__name__.startswith("_") and method.__doc__:
                        parts.append(inspect.cleandoc(method.__doc__))
    return "\n\n".join(p for p in parts if p)


class CharLSTM(nn.Module):
    """The pre-classifier: characters (seq, batch) -> (features (seq, batch, hidden), state)."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers)

    def forward(self, x: torch.Tensor, state):
        out, state = self.lstm(self.embedding(x), state)
        return out, state

    def init_hidden(self, batch: int):
        zeros = torch.zeros(self.layers, batch, self.hidden)
        return zeros, zeros.clone()


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(len // batch, batch): each column a contiguous stream, as in the PTB examples."""
    n = len(ids) // batch
    return ids[: n * batch].view(batch, n).t().contiguous()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600: about a minute on a CPU)")
    p.add_argument("--out", default="runs/char_lstm", help="folder for summary.json")
    p.add_argument("--lr-min", type=float, default=1e-3)
    p.add_argument("--lr-max", type=float, default=10.0)
    p.add_argument("--n-classifiers", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bptt", type=int, default=50)
    p.add_argument("--emb", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--clip", type=float, default=0.25, help="gradient-norm clip of the pre-classifier (0: off)")
    p.add_argument("--max-chars", type=int, default=400_000, help="use at most this much text")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: a model this small gains little from more)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = stdlib_text()[: args.max_chars]
    if len(text) < 10_000:
        raise SystemExit(f"only {len(text)} characters of docstrings found (python -OO strips them)")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.95 * len(ids))
    train, val = batchify(ids[:split], args.batch_size), batchify(ids[split:], 10)

    pre = CharLSTM(len(chars), args.emb, args.hidden, args.layers)
    model = AlraoModel("classification", nn.NLLLoss(), pre, args.n_classifiers, LinearClassifierRNN,
                       args.hidden, len(chars))
    model.method_fwd_preclassifier("init_hidden")
    optimizer = AlraoSGD(model, args.lr_min, args.lr_max, seed=args.seed)
    print(f"{len(text)} characters, {len(chars)} symbols; classifier LRs "
          + ", ".join(f"{lr:.3g}" for lr in optimizer.classifier_lrs()), flush=True)

    losses: list[float] = []
    state = model.init_hidden(args.batch_size)
    pos, started = 0, time.time()
    model.train()
    for step in range(1, args.steps + 1):
        if pos + args.bptt + 1 > len(train):
            pos, state = 0, model.init_hidden(args.batch_size)
        x, y = train[pos:pos + args.bptt], train[pos + 1:pos + 1 + args.bptt].reshape(-1)
        pos += args.bptt
        state = tuple(s.detach() for s in state)  # truncated BPTT
        optimizer.zero_grad(set_to_none=True)
        logp, state = model(x, state)
        loss = nn.functional.nll_loss(logp, y)
        loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.preclassifier.parameters(), args.clip)
        alrao_step(model, optimizer, y)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
            print(f"step {step:5d}  loss {recent:.3f} nats = {recent / math.log(2):.3f} bits/char  "
                  f"posterior {model.repr_posterior()}  {time.time() - started:.0f}s", flush=True)

    val_loss = evaluate(model, val, args.bptt)
    sample = generate(model, chars, index, prompt="The ", length=200, seed=args.seed)
    print(f"validation loss {val_loss:.3f} nats = {val_loss / math.log(2):.3f} bits/char\nsample: {sample!r}")
    summary = {"steps": args.steps, "chars": len(text), "vocab": len(chars), "losses": losses,
               "val_loss": val_loss, "val_bits_per_char": val_loss / math.log(2),
               "classifier_lrs": optimizer.classifier_lrs(), "posterior": model.posterior().tolist(),
               "wall_s": time.time() - started, "sample": sample, "config": vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


@torch.no_grad()
def evaluate(model: AlraoModel, data: torch.Tensor, bptt: int) -> float:
    model.eval()
    state, total, count = model.init_hidden(data.shape[1]), 0.0, 0
    for pos in range(0, len(data) - 1, bptt):
        x = data[pos:pos + bptt]
        y = data[pos + 1:pos + 1 + len(x)].reshape(-1)
        x = x[: len(y) // data.shape[1]]
        logp, state = model(x, state)
        total += nn.functional.nll_loss(logp, y, reduction="sum").item()
        count += len(y)
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def generate(model: AlraoModel, chars: list[str], index: dict, prompt: str, length: int, seed: int) -> str:
    """Sample from the mixture, character by character."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    state = model.init_hidden(1)
    x = torch.tensor([[index.get(c, 0)] for c in prompt])
    out = list(prompt)
    for _ in range(length):
        logp, state = model(x, state)
        nxt = torch.multinomial(logp[-1].exp(), 1, generator=g).item()
        out.append(chars[nxt])
        x = torch.tensor([[nxt]])
    model.train()
    return "".join(out)


if __name__ == "__main__":
    main()
