"""Train a small qwen2moe-style MoE on text found on this machine and export it as an F16 GGUF.

Random weights have no real quantization sensitivity, so the optimizer and its benchmark need a
model that has learned something. This trains one on the CPU in a fixed wall-clock budget:
routed experts with top-2 routing plus a gated shared expert, and the 259-token byte-level SPM
vocabulary of ``apex_gui.core.fixtures.synthetic``. The GGUF is written with that module's writer,
so it loads in llama.cpp exactly like the synthetic models.

Two sizes (``--model``): ``demo`` (12 layers, 11.4 MB in F16) is the model bundled in
``resources/demo/`` that the app opens on first start; ``optimizer`` (24 layers, so every APEX
band applies; 36.7 MB, too big to bundle) is the one ``benchmarks/bench_optimizer.py`` measured.

The forward pass mirrors llama.cpp's ``qwen2moe`` graph: RMS norms, biased Q/K/V, NEOX RoPE,
softmax router without renormalising the top-k weights, and a sigmoid-gated shared expert.
``--check`` compares PyTorch's perplexity with llama-perplexity's on held-out text.

Needs the optional extra ``train`` (``pip install -e .[train]``): PyTorch, CPU build.

    nice -n 15 python training/train_demo_moe.py --model demo --minutes 25 -o /tmp/apex-train
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apex_gui.core.fixtures import synthetic  # noqa: E402
from apex_gui.core.fixtures.synthetic import ( # noqa: E402
    BOS_ID, N_SPECIAL_TOKENS, VOCAB_SIZE, SyntheticModelSpec,
)

#: Widths that are multiples of 256 keep every K-quant and IQ type usable (llama-quantize falls
#: back to legacy types on shorter rows); only ``ffn_down_exps`` (rows of n_ff_exp) falls back,
#: as it does on several real MoEs.
TRAINED_SPEC = SyntheticModelSpec(
    arch="qwen2moe", n_layer=24, n_embd=256, n_head=4, n_head_kv=1, n_expert=8,
    n_expert_used=2, n_ff_exp=64, n_ff_shexp=256, context_length=512, seed=0, dtype="f16",
    name="APEX trained demo qwen2moe", rope_freq_base=10_000.0,
)
#: The bundled demo: the same widths with half the layers and narrower experts, so that the F16
#: file stays under the 12 MB a repository should carry (attention alone is 163k parameters a
#: layer at n_embd 256). Eight experts, top-2, as sparse as the real MoEs.
DEMO_TRAINED_SPEC = SyntheticModelSpec(
    arch="qwen2moe", n_layer=12, n_embd=256, n_head=4, n_head_kv=1, n_expert=8,
    n_expert_used=2, n_ff_exp=32, n_ff_shexp=128, context_length=512, seed=0, dtype="f16",
    name="APEX trained demo qwen2moe", rope_freq_base=10_000.0,
)
SPECS = {"demo": DEMO_TRAINED_SPEC, "optimizer": TRAINED_SPEC}

#: SPM tokenizers write spaces as U+2581; with only byte tokens llama.cpp then feeds its UTF-8 bytes.
SPM_SPACE = "\u2581"


def spm_bytes(text: str) -> bytes:
    """What llama.cpp's SPM tokenizer turns ``text`` into (byte fallback, no space prefix)."""
    return text.replace(" ", SPM_SPACE).encode("utf-8")


def encode(text: str, bos: bool = True) -> list[int]:
    ids = [b + N_SPECIAL_TOKENS for b in spm_bytes(text)]
    return [BOS_ID, *ids] if bos else ids


# --- corpus -------------------------------------------------------------------------------------


def stdlib_text(limit_bytes: int, seed: int) -> list[str]:
    """Python standard library sources, shuffled by file."""
    files = sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))
    files = [f for f in files if "/test" not in f and "site-packages" not in f and "dist-packages" not in f]
    random.Random(seed).shuffle(files)
    out, total = [], 0
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return out


def man_text(limit_bytes: int, seed: int) -> list[str]:
    """Plain-text man pages (``man -P cat``), a few hundred of them."""
    pages = sorted(Path(p).name.split(".")[0] for p in glob.glob("/usr/share/man/man1/*.1*"))
    random.Random(seed).shuffle(pages)
    out, total = [], 0
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    for page in pages:
        try:
            res = subprocess.run(["man", "-P", "cat", page], capture_output=True, text=True,
                                 timeout=10, env=env)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = re.sub(".\b", "", res.stdout)  # strip overstrike bold/underline
        if len(text) < 500:
            continue
        out.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return out


# --- model --------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_ctx: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(n_ctx, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # NEOX layout (llama.cpp's qwen2moe): rotate the two halves of each head against each other.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, s: SyntheticModelSpec) -> None:
        super().__init__()
        self.s = s
        hd = s.head_dim
        self.attn_norm = RMSNorm(s.n_embd, s.rms_norm_eps)
        self.q = nn.Linear(s.n_embd, s.n_head * hd)
        self.k = nn.Linear(s.n_embd, s.n_head_kv * hd)
        self.v = nn.Linear(s.n_embd, s.n_head_kv * hd)
        self.o = nn.Linear(s.n_head * hd, s.n_embd, bias=False)
        self.ffn_norm = RMSNorm(s.n_embd, s.rms_norm_eps)
        self.router = nn.Linear(s.n_embd, s.n_expert, bias=False)
        std = 0.02
        self.gate_exps = nn.Parameter(torch.randn(s.n_expert, s.n_ff_exp, s.n_embd) * std)
        self.up_exps = nn.Parameter(torch.randn(s.n_expert, s.n_ff_exp, s.n_embd) * std)
        self.down_exps = nn.Parameter(torch.randn(s.n_expert, s.n_embd, s.n_ff_exp) * std)
        self.gate_inp_shexp = nn.Parameter(torch.zeros(s.n_embd))
        self.gate_shexp = nn.Linear(s.n_embd, s.n_ff_shexp, bias=False)
        self.up_shexp = nn.Linear(s.n_embd, s.n_ff_shexp, bias=False)
        self.down_shexp = nn.Linear(s.n_ff_shexp, s.n_embd, bias=False)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        s, (b, t, _) = self.s, x.shape
        hd = s.head_dim
        q = self.q(x).view(b, t, s.n_head, hd).transpose(1, 2)
        k = self.k(x).view(b, t, s.n_head_kv, hd).transpose(1, 2)
        v = self.v(x).view(b, t, s.n_head_kv, hd).transpose(1, 2)
        q, k = apply_rope_neox(q, cos[:t], sin[:t]), apply_rope_neox(k, cos[:t], sin[:t])
        rep = s.n_head // s.n_head_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, s.n_head * hd))

    def moe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.s
        flat = x.reshape(-1, s.n_embd)
        probs = torch.softmax(self.router(flat), dim=-1)
        weights, chosen = probs.topk(s.n_expert_used, dim=-1)  # qwen2moe: no renormalisation
        out = torch.zeros_like(flat)
        for e in range(s.n_expert):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            h = flat[rows]
            y = F.silu(h @ self.gate_exps[e].T) * (h @ self.up_exps[e].T)
            out.index_add_(0, rows, (y @ self.down_exps[e].T) * weights[rows, slot, None])
        # Switch-style balance: fraction routed times mean probability, per expert.
        frac = F.one_hot(chosen, s.n_expert).float().sum(1).mean(0) / s.n_expert_used
        balance = s.n_expert * (frac * probs.mean(0)).sum()
        shared = self.down_shexp(F.silu(self.gate_shexp(flat)) * self.up_shexp(flat))
        shared = shared * torch.sigmoid(flat @ self.gate_inp_shexp)[:, None]
        return (out + shared).view_as(x), balance

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attention(self.attn_norm(x), cos, sin)
        m, balance = self.moe(self.ffn_norm(x))
        return x + m, balance


class TinyQwen2Moe(nn.Module):
    def __init__(self, s: SyntheticModelSpec) -> None:
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(VOCAB_SIZE, s.n_embd)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.norm = RMSNorm(s.n_embd, s.rms_norm_eps)
        self.output = nn.Linear(s.n_embd, VOCAB_SIZE, bias=False)
        for blk in self.blocks:  # residual writers start small so deep stacks train stably
            nn.init.normal_(blk.o.weight, std=0.02 / math.sqrt(2 * s.n_layer))
            nn.init.normal_(blk.down_shexp.weight, std=0.02 / math.sqrt(2 * s.n_layer))
            with torch.no_grad():
                blk.down_exps.mul_(1 / math.sqrt(2 * s.n_layer))
        cos, sin = rope_tables(s.context_length, s.head_dim, s.rope_freq_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids)
        balance = torch.zeros(())
        for blk in self.blocks:
            x, b = blk(x, self.cos, self.sin)
            balance = balance + b
        # Averaged over layers: a per-layer sum would scale the pressure with depth.
        return self.output(self.norm(x)), balance / len(self.blocks)


# --- export -------------------------------------------------------------------------------------


def gguf_parameters(model: TinyQwen2Moe) -> dict[str, torch.Tensor]:
    """Every parameter under its GGUF name (shapes already in GGUF's row-major order)."""
    t = {"token_embd.weight": model.embed.weight, "output_norm.weight": model.norm.weight,
         "output.weight": model.output.weight}
    for i, blk in enumerate(model.blocks):
        b = f"blk.{i}."
        t |= {
            b + "attn_norm.weight": blk.attn_norm.weight, b + "attn_q.weight": blk.q.weight,
            b + "attn_k.weight": blk.k.weight, b + "attn_v.weight": blk.v.weight,
            b + "attn_q.bias": blk.q.bias, b + "attn_k.bias": blk.k.bias,
            b + "attn_v.bias": blk.v.bias, b + "attn_output.weight": blk.o.weight,
            b + "ffn_norm.weight": blk.ffn_norm.weight, b + "ffn_gate_inp.weight": blk.router.weight,
            b + "ffn_gate_exps.weight": blk.gate_exps, b + "ffn_up_exps.weight": blk.up_exps,
            b + "ffn_down_exps.weight": blk.down_exps,
            b + "ffn_gate_inp_shexp.weight": blk.gate_inp_shexp,
            b + "ffn_gate_shexp.weight": blk.gate_shexp.weight,
            b + "ffn_up_shexp.weight": blk.up_shexp.weight,
            b + "ffn_down_shexp.weight": blk.down_shexp.weight,
        }
    return t


def gguf_tensors(model: TinyQwen2Moe) -> dict[str, np.ndarray]:
    """Every tensor in GGUF naming, as numpy arrays in row-major (slowest dimension first) order."""
    return {k: v.detach().float().numpy() for k, v in gguf_parameters(model).items()}


def export_gguf(model: TinyQwen2Moe, path: Path) -> Path:
    """Write ``model`` as an F16 qwen2moe GGUF with the synthetic models' writer and tokenizer."""
    import gguf

    s = model.s
    arrays = gguf_tensors(model)
    expected = synthetic.expected_tensor_shapes(s)
    tmp = path.with_name(f".{path.name}.part")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, s.arch)
    try:
        synthetic._add_hparams(writer, s)
        synthetic._add_tokenizer(writer)
        # Training text was fed as llama.cpp's SPM tokenizer produces it without a space prefix.
        writer.add_add_space_prefix(False)
        for name, ne in expected.items():
            values = arrays[name]
            if values.shape != tuple(reversed(ne)):
                raise ValueError(f"{name}: trained shape {values.shape}, GGUF needs {tuple(reversed(ne))}")
            stays_f32 = len(ne) == 1 or name.endswith(".bias")
            writer.add_tensor(name, values.astype(np.float32 if stays_f32 else np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def load_gguf(path: Path) -> TinyQwen2Moe:
    """The PyTorch model with the weights of an exported GGUF (F16 read back as float32)."""
    import gguf

    reader = gguf.GGUFReader(path, "r")

    def key(name: str) -> int:
        return int(reader.get_field(f"qwen2moe.{name}").contents())

    spec = SyntheticModelSpec(**{
        **asdict(TRAINED_SPEC), "n_layer": key("block_count"), "n_embd": key("embedding_length"),
        "n_head": key("attention.head_count"), "n_head_kv": key("attention.head_count_kv"),
        "n_expert": key("expert_count"), "n_expert_used": key("expert_used_count"),
        "n_ff_exp": key("expert_feed_forward_length"),
        "n_ff_shexp": key("expert_shared_feed_forward_length")})
    model = TinyQwen2Moe(spec)
    stored = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    with torch.no_grad():
        for name, target in gguf_parameters(model).items():
            target.copy_(torch.from_numpy(stored[name].reshape(target.shape)))
    return model.eval()


# --- perplexity as llama-perplexity computes it ------------------------------------------------


@torch.no_grad()
def llama_style_perplexity(model: TinyQwen2Moe, text: str, n_ctx: int) -> tuple[float, int]:
    """Perplexity with llama-perplexity's chunking: BOS first in each chunk, second half scored."""
    ids = encode(text, bos=True)
    n_chunk = len(ids) // n_ctx
    first = n_ctx // 2
    nll, count = 0.0, 0
    for c in range(n_chunk):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx]
        chunk[0] = BOS_ID
        logits, _ = model(torch.tensor([chunk]))
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        targets = torch.tensor(chunk[first + 1:])
        nll -= logp[first:n_ctx - 1].gather(1, targets[:, None]).sum().item()
        count += n_ctx - 1 - first
    return math.exp(nll / count), n_chunk


# --- training -----------------------------------------------------------------------------------


def build_corpus(seed: int) -> tuple[np.ndarray, str]:
    docs = stdlib_text(12_000_000, seed) + man_text(1_500_000, seed)
    random.Random(seed).shuffle(docs)
    held_out = "\n".join(docs[:4])[:12_000]  # a few whole documents, never trained on
    train = "\n".join(docs[4:])
    data = np.frombuffer(spm_bytes(train), dtype=np.uint8).astype(np.int64) + N_SPECIAL_TOKENS
    return data, held_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out-dir", type=Path, required=True)
    ap.add_argument("--model", choices=sorted(SPECS), default="demo",
                    help="demo: the bundled 12-layer model; optimizer: the 24-layer one")
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128, help="training sequence length")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--balance-coef", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="model.pt of an earlier run to continue from (same --model); the "
                         "bundled demo was trained at --ctx 128, then continued at --ctx 512")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    data, held_out = build_corpus(args.seed)
    (out / "heldout.txt").write_text(held_out, encoding="utf-8")
    print(f"corpus: {len(data):,} tokens; held-out text {len(held_out):,} chars", flush=True)

    spec = SPECS[args.model]
    model = TinyQwen2Moe(spec)
    if args.init_from is not None:
        model.load_state_dict(torch.load(args.init_from, map_location="cpu"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = np.random.default_rng(args.seed)
    budget = args.minutes * 60
    start = time.monotonic()
    step, tokens, ema = 0, 0, None
    warmup = 20
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget:
            break
        # Cosine decay over the wall-clock budget: the number of steps is not known in advance.
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = gen.integers(0, len(data) - args.ctx, args.batch)
        seq = np.stack([data[s:s + args.ctx] for s in starts])
        seq[:, 0] = BOS_ID
        x = torch.from_numpy(seq)
        logits, balance = model(x)
        lm = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1))
        loss = lm + args.balance_coef * balance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        ema = lm.item() if ema is None else 0.98 * ema + 0.02 * lm.item()
        if step % 10 == 0:
            print(f"step {step} tokens {tokens:,} loss {ema:.3f} balance {balance.item():.3f} "
                  f"lr {lr:.2e} {tokens / (time.monotonic() - start):.0f} tok/s", flush=True)
    train_s = time.monotonic() - start

    model.eval()
    ppl, n_chunk = llama_style_perplexity(model, held_out, 256)
    gguf_path = export_gguf(model, out / "apex-demo-trained-qwen2moe-f16.gguf")
    torch.save(model.state_dict(), out / "model.pt")
    figures = {
        "spec": asdict(spec),
        "parameters": n_params,
        "train_tokens": tokens,
        "train_steps": step,
        "train_seconds": round(train_s, 1),
        "threads": args.threads,
        "batch": args.batch,
        "train_ctx": args.ctx,
        "init_from": str(args.init_from) if args.init_from else None,
        "lr": args.lr,
        "final_train_loss_ema": round(ema or float("nan"), 4),
        "heldout_ppl_pytorch_ctx256": round(ppl, 4),
        "heldout_chunks_ctx256": n_chunk,
        "gguf_bytes": gguf_path.stat().st_size,
        "corpus": "Python 3.11 standard library sources + man pages (man -P cat), held-out docs excluded",
    }
    (out / "training.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
