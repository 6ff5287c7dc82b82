"""Every GPU path of embedstore, checked and timed against its peer in one call (issues 16 and 17).

On a lent H100/H200 the whole suite runs in one command, well under 8 minutes; `--smoke` runs the same code on
the CPU with tiny models and slices (tests/test_benchmarks_smoke.py runs it in CI, so it cannot rot).

  text    SST-2 train (60,614 sentences) through the all-MiniLM-L6-v2 architecture (random weights: no weights
          travel to the GPU machine): `store.ingest` vs SentenceTransformer.encode (its default, float32, batch
          32; and bf16, batch 32 and 512); the model alone (pre-tokenised, bf16 forward + pooling) as the ceiling;
          GPU vectors vs CPU float32 vectors (cosine >= 0.99 per sentence); a re-ingest embeds 0; then what
          follows on the store: heads.fit logreg and 1,000 FAISS searches (FAISS is the CPU build).
  images  JPEG files (CIFAR-10 test images upscaled to 500x375, written there) through ViT-B/32 (timm
          vit_base_patch32_224, random weights): `store.ingest(folder)` with CPU decoding workers and with nvjpeg
          (gpu_decode=true) vs a torch DataLoader (16 workers) + PIL + timm's eval transform + the same model
          (float32, and bf16 autocast); GPU vs CPU vectors.
  dna     1 kb sequences through a Nucleotide-Transformer-50M-sized ESM (random weights): `store.ingest` vs
          tokenizer + model + masked mean, 32 at a time; GPU vs CPU vectors.
  model   model-only bf16 utilisation (FLOPs counted by torch's FlopCounterMode, over the time of 20 forward
          passes) for ViT-B/32, EfficientNet-Lite0, MiniLM-L6 and the DNA model, as a fraction of the chip's
          dense bf16 peak (spec sheet) and of an 8192^3 bf16 matmul measured in the same run.

Before a GPU call, on a machine with the datasets and pip (writes the ignored folder .gpu/, about 50 MB):
    python benchmarks/gpu_suite.py --prepare
Then, on the GPU machine, with .gpu carried:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && \\
      PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_suite.py --data .gpu --out "$OUT"
Each section's failure is recorded with its traceback and the next section still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, dataset_path, parser, ratio, read_sst2, show, write_results  # noqa: E402

SPEC_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # dense TFLOP/s
WHEELS = ("duckdb", "faiss-cpu", "lightgbm")  # what the GPU image lacks (torch, timm, transformers... it has)
GOALS = {"text_vs_st_default": 25.0, "images_vs_dataloader": 20.0, "vit_b32_of_peak": 0.60, "dna_of_peak": 0.40}


@dataclass
class Context:
    device: str
    smoke: bool
    data: Path
    tmp: Path

    def n(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def clock(fn, device: str) -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def store_vectors(store, dataset: str, keys: list[str]) -> np.ndarray:
    rows = dict(store.sql(f"SELECT key, vector FROM embeddings WHERE dataset = '{dataset}'").rows())
    return np.array([rows[k] for k in keys], np.float32)


# -- preparation (CPU side) ---------------------------------------------------------------------------------------
def prepare(out: Path) -> None:
    """The data slices, the MiniLM tokenizer files and the wheels the GPU image lacks, into `out` (ignored)."""
    import tarfile
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dataset_path("text", "sst2", "train.tsv"), out / "sst2_train.tsv")
    with tarfile.open(dataset_path("image", "cifar10", "test.tar.gz")) as src, \
            tarfile.open(out / "cifar_test_2000.tar", "w") as dst:
        members = sorted((m for m in src if m.isfile()), key=lambda m: m.name)[:2000]
        for m in members:
            dst.addfile(m, src.extractfile(m))
    tok = out / "minilm_tokenizer"
    tok.mkdir(exist_ok=True)
    from embedstore.encoders import get_encoder
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                 "modules.json", "sentence_bert_config.json"):
        if (get_encoder("minilm").model_dir / name).exists():
            shutil.copy(get_encoder("minilm").model_dir / name, tok / name)
    for sub in ("1_Pooling", "2_Normalize"):
        if (get_encoder("minilm").model_dir / sub).exists():
            shutil.copytree(get_encoder("minilm").model_dir / sub, tok / sub, dirs_exist_ok=True)
    whl = out / "whl"
    whl.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    for pkg in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(whl), pkg],
                       check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"prepared {out} ({size / 2**20:.1f} MiB): carry it and pass --data {out}")


# -- models ------------------------------------------------------------------------------------------------------
def minilm_dir(ctx: Context) -> Path:
    """all-MiniLM-L6-v2's architecture and sentence-transformers modules (mean pooling, Normalize) with random
    weights and its real tokenizer; smoke: 2 layers, 32 wide."""
    import torch
    from transformers import BertConfig, BertModel
    src = ctx.data / "minilm_tokenizer"
    if not src.exists():
        from embedstore.encoders import get_encoder
        src = get_encoder("minilm").model_dir
    d = ctx.tmp / "minilm-random"
    d.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_dir():
            shutil.copytree(f, d / f.name, dirs_exist_ok=True)
        elif not f.name.endswith((".safetensors", ".bin", ".onnx")):
            shutil.copy(f, d / f.name)
    cfg = json.loads((src / "config.json").read_text())
    if ctx.smoke:
        cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        pool = json.loads((d / "1_Pooling" / "config.json").read_text())
        (d / "1_Pooling" / "config.json").write_text(json.dumps({**pool, "word_embedding_dimension": 32}))
    torch.manual_seed(0)
    BertModel(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}),
              add_pooling_layer=False).save_pretrained(d)
    return d


def vit_spec(ctx: Context, arch: str) -> str:
    import timm
    import torch
    w = ctx.tmp / f"{arch}.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model(arch).state_dict(), w)
    return f"timm:{arch}?weights={w}"


# -- sections ----------------------------------------------------------------------------------------------------
def section_text(ctx: Context) -> dict:
    import torch
    import embedstore
    import heads
    from embedstore.encoders import get_encoder
    from sentence_transformers import SentenceTransformer
    path = ctx.data / "sst2_train.tsv"
    sentences, labels = read_sst2(path if path.exists() else dataset_path("text", "sst2", "train.tsv"),
                                  ctx.n(10**9, 300))
    d, dev = minilm_dir(ctx), ctx.device
    st = SentenceTransformer(str(d), device=dev)
    st.encode(sentences[:256])
    t_st, ref = clock(lambda: st.encode(sentences, batch_size=32), dev)
    st16 = SentenceTransformer(str(d), device=dev).to(torch.bfloat16)
    st16.encode(sentences[:256])
    t_st16, _ = clock(lambda: st16.encode(sentences, batch_size=32), dev)
    t_st16_512, _ = clock(lambda: st16.encode(sentences, batch_size=512), dev)
    spec = f"st:{d}?device={dev}"
    enc = get_encoder(spec)  # one encoder object, as a Python user passes it: the model loads once, in the warm-up
    rows = [{"key": f"s{i}", "text": s, "label": y} for i, (s, y) in enumerate(zip(sentences, labels))]
    warm = [{"key": f"w{i}", "text": " ".join(reversed(s.split())) + " (warm-up)", "label": y}
            for i, (s, y) in enumerate(zip(sentences[:256], labels))]  # other contents: nothing comes from cache
    cols = dict(text_column="text", label_column="label", id_column="key", progress=False)
    with embedstore.open(ctx.tmp / "text-store") as store:
        store.ingest(warm, dataset="warm", encoder=enc, **cols)
        t_ours, rep = clock(lambda: store.ingest(rows, dataset="sst2", encoder=enc, **cols), dev)
        t_again, again = clock(lambda: store.ingest(rows, dataset="sst2", encoder=enc, **cols), dev)
        keys = [r["key"] for r in rows[:500]]
        ours = store_vectors(store, "sst2", keys)
        cpu = SentenceTransformer(str(d), device="cpu").encode([r["text"] for r in rows[:500]], batch_size=32)
        cos_cpu = cosines(ours, cpu)
        t_fit, _ = clock(lambda: heads.fit(store, "sst2", model="logreg", encoder=spec, name="sst2-lr", cv=2), "cpu")
        queries = ours[: ctx.n(1000, 20)]
        t_search, _ = clock(lambda: [store.search("sst2", vector=q, k=10, encoder=spec) for q in queries], "cpu")
    n = len(sentences)
    return {"sentences": n, "embedded": rep.embedded, "reingest_embedded": again.embedded,
            "reingest_s": t_again, "ingest_per_s": n / t_ours, "st_default_per_s": n / t_st,
            "st_bf16_b32_per_s": n / t_st16, "st_bf16_b512_per_s": n / t_st16_512,
            "text_vs_st_default": ratio(t_st, t_ours), "text_vs_st_bf16_best": ratio(min(t_st16, t_st16_512), t_ours),
            "model_only_bf16_per_s": model_only_text(ctx, d, sentences),
            "cos_gpu_vs_cpu_fp32_min": float(cos_cpu.min()), "cos_vs_st_same_device_min":
            float(cosines(ours, ref[:500]).min()), "heads_fit_logreg_s": t_fit,
            "faiss_search_ms_per_query": 1000 * t_search / len(queries)}


def model_only_text(ctx: Context, d: Path, sentences: list[str]) -> float:
    """Sentences/s of the bf16 forward + mean pooling alone, on pre-tokenised length-sorted batches of 512."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, dtype=torch.bfloat16).to(ctx.device).eval()
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    batches = [tok([sentences[i] for i in order[j:j + 512]], padding=True, truncation=True, max_length=256,
                   return_tensors="pt").to(ctx.device) for j in range(0, len(order), 512)]

    def run():
        with torch.inference_mode():
            for f in batches:
                h = model(**f).last_hidden_state
                m = f["attention_mask"].unsqueeze(-1).to(h.dtype)
                (h * m).sum(1) / m.sum(1)
    run()
    t, _ = clock(run, ctx.device)
    return len(sentences) / t


def write_jpegs(ctx: Context, n: int, name: str = "jpegs", flip: bool = False) -> Path:
    """The first n CIFAR-10 test images as 500x375 JPEG files in class folders (flipped: other contents)."""
    import io
    import tarfile
    from PIL import Image
    folder = ctx.tmp / name
    src = ctx.data / "cifar_test_2000.tar"
    src = src if src.exists() else dataset_path("image", "cifar10", "test.tar.gz")
    with tarfile.open(src) as tf:
        members = sorted((m for m in tf if m.isfile()), key=lambda m: m.name)[:n]
        for i, m in enumerate(members):
            label = m.name.split("/")[1]
            (folder / label).mkdir(parents=True, exist_ok=True)
            img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB").resize((500, 375), Image.BICUBIC)
            img = img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img
            img.save(folder / label / f"{i:05d}.jpg", quality=90)
    return folder


def peer_dataloader(files: list[Path], model, transform, device: str, workers: int, bf16: bool) -> np.ndarray:
    import torch
    from PIL import Image

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return transform(Image.open(files[i]).convert("RGB"))
    loader = torch.utils.data.DataLoader(Files(), batch_size=64, num_workers=workers, pin_memory=device != "cpu")
    out = []
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        for x in loader:
            out.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out).numpy()


def section_images(ctx: Context) -> dict:
    import timm
    import torch
    import embedstore
    from embedstore.encoders import get_encoder
    arch = "test_vit" if ctx.smoke else "vit_base_patch32_224"
    n = ctx.n(4000, 24)
    folder, warm = write_jpegs(ctx, n), write_jpegs(ctx, ctx.n(128, 8), "warm", flip=True)
    files = sorted(folder.rglob("*.jpg"))
    spec = vit_spec(ctx, arch)
    dev = ctx.device
    model = timm.create_model(arch, num_classes=0)
    model.load_state_dict({k: v for k, v in torch.load(spec.split("weights=")[1], weights_only=True).items()
                           if not k.startswith("head.")}, strict=False)
    model = model.to(dev).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    workers = min(16, os.cpu_count() or 1)
    peer_dataloader(files[:128], model, transform, dev, workers, False)
    t_peer, _ = clock(lambda: peer_dataloader(files, model, transform, dev, workers, False), dev)
    t_peer16, _ = clock(lambda: peer_dataloader(files, model, transform, dev, workers, True), dev)
    res: dict = {"images": n, "size": "500x375 JPEG", "model": arch, "peer_workers": workers,
                 "dataloader_fp32_per_s": n / t_peer, "dataloader_bf16_per_s": n / t_peer16}
    for mode in ("false", "true") if dev.startswith("cuda") else ("false",):
        enc = get_encoder(f"{spec}&device={dev}&gpu_decode={mode}")
        with embedstore.open(ctx.tmp / f"img-store-{mode}") as store:
            store.ingest(warm, dataset="warm", encoder=enc, progress=False)  # the model loads, workers start
            t_ours, rep = clock(lambda: store.ingest(folder, dataset="img", encoder=enc, progress=False), dev)
            again = store.ingest(folder, dataset="img", encoder=enc, progress=False)
            keys = [str(f.relative_to(folder)) for f in files[:32]]
            ours = store_vectors(store, "img", keys)
        res[f"gpu_decode_{mode}"] = {"ingest_per_s": n / t_ours, "embedded": rep.embedded,
                                     "reingest_embedded": again.embedded,
                                     "vs_dataloader_fp32": ratio(t_peer, t_ours),
                                     "vs_dataloader_bf16": ratio(t_peer16, t_ours)}
    cpu = get_encoder(f"{spec}&device=cpu&dtype=float32&runtime=torch").embed([f.read_bytes() for f in files[:32]])
    res["cos_gpu_vs_cpu_fp32_min"] = float(cosines(ours, cpu.vectors).min())
    res["images_vs_dataloader"] = max(v["vs_dataloader_fp32"] for k, v in res.items() if k.startswith("gpu_decode"))
    return res


def section_dna(ctx: Context) -> dict:
    import torch
    import embedstore
    from embedstore.encoders import get_encoder
    from embedstore.testing import save_random_esm
    from transformers import AutoModel, AutoTokenizer
    size = dict(hidden=32, layers=2, heads=2, intermediate=64) if ctx.smoke else \
        dict(hidden=512, layers=12, heads=16, intermediate=2048)  # Nucleotide Transformer v2 50M's shape
    d = save_random_esm(ctx.tmp / "nt-random", context=1000, **size)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 1000)) for _ in range(ctx.n(4000, 16))]
    dev = ctx.device
    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).to(dev).eval()

    def peer(bf16: bool):
        with torch.inference_mode(), torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(seqs), 32):
                f = tok(seqs[i:i + 32], padding=True, truncation=True, return_tensors="pt").to(dev)
                h = model(**f).last_hidden_state
                m = f["attention_mask"].unsqueeze(-1)
                (h * m).sum(1) / m.sum(1)
    peer(False)
    t_peer, _ = clock(lambda: peer(False), dev)
    t_peer16, _ = clock(lambda: peer(True), dev)
    enc = get_encoder(f"hf-dna:{d}?device={dev}")
    warm = ["".join(rng.choice(list("ACGT"), 1000)) for _ in range(64)]
    with embedstore.open(ctx.tmp / "dna-store") as store:
        store.ingest(warm, dataset="warm", encoder=enc, progress=False)
        t_ours, rep = clock(lambda: store.ingest(seqs, dataset="dna", encoder=enc, progress=False), dev)
        again = store.ingest(seqs, dataset="dna", encoder=enc, progress=False)
    cpu = get_encoder(f"hf-dna:{d}?device=cpu&dtype=float32")
    cos = cosines(enc.embed(seqs[:16]).vectors, cpu.embed(seqs[:16]).vectors)
    flops = forward_flops(model, dict(tok(seqs[:8], return_tensors="pt").to(dev)))
    n = len(seqs)
    return {"sequences": n, "bp": 1000, "embedded": rep.embedded, "reingest_embedded": again.embedded,
            "ingest_per_s": n / t_ours, "peer_fp32_per_s": n / t_peer, "peer_bf16_per_s": n / t_peer16,
            "vs_peer_fp32": ratio(t_peer, t_ours), "vs_peer_bf16": ratio(t_peer16, t_ours),
            "ingest_flop_per_s": flops / 8 * n / t_ours, "cos_gpu_vs_cpu_fp32_min": float(cos.min())}


def forward_flops(model, inputs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return float(counter.get_total_flops())


def section_model(ctx: Context) -> dict:
    """bf16 forward passes alone: achieved FLOP/s over 20 passes, as fractions of the peaks."""
    import timm
    import torch
    from transformers import AutoModel
    dev = ctx.device
    res: dict = {}
    if dev.startswith("cuda"):
        name = torch.cuda.get_device_name()
        res["gpu"] = name
        res["spec_peak_bf16"] = next((v for k, v in SPEC_PEAK_BF16.items() if k in name), None)
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        t, _ = clock(lambda: [a @ a for _ in range(10)], dev)
        res["matmul_8192_bf16"] = 10 * 2 * 8192**3 / t
    batch = ctx.n(256, 2)
    models = {"vit_b32": ("test_vit" if ctx.smoke else "vit_base_patch32_224", 224),
              "efficientnet_lite0": ("efficientnet_lite0", 224)}
    for key, (arch, px) in models.items():
        m = timm.create_model(arch, num_classes=0).to(dev).eval()
        x = torch.randn(batch, 3, px, px, device=dev).contiguous(memory_format=torch.channels_last)
        res[key] = model_rate(m, x, dev, ctx.n(20, 2))
    d = ctx.tmp / "minilm-random"
    if d.exists():
        m = AutoModel.from_pretrained(d).to(dev).eval()
        ids = torch.randint(1000, 2000, (ctx.n(512, 2), 32), device=dev)
        res["minilm_l6_32_tokens"] = model_rate(m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, dev,
                                                ctx.n(20, 2))
    nt = ctx.tmp / "nt-random"
    if nt.exists():
        m = AutoModel.from_pretrained(nt).to(dev).eval()
        ids = torch.randint(5, 4000, (ctx.n(64, 2), 168), device=dev)
        res["dna_nt50m_1kb"] = model_rate(m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, dev,
                                          ctx.n(20, 2))
    for v in res.values():
        if isinstance(v, dict):
            v["of_spec_peak"] = v["flop_per_s"] / res["spec_peak_bf16"] if res.get("spec_peak_bf16") else None
            v["of_matmul"] = v["flop_per_s"] / res["matmul_8192_bf16"] if res.get("matmul_8192_bf16") else None
    return res


def model_rate(model, inputs, dev: str, passes: int) -> dict:
    """bf16 forward passes per second (after as many to warm up) and the FLOP/s they reach."""
    import torch
    flops = forward_flops(model, inputs)

    def run():
        with torch.inference_mode(), torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
            for _ in range(passes):
                model(**inputs) if isinstance(inputs, dict) else model(inputs)
    run()
    t, _ = clock(run, dev)
    return {"flop_per_s": passes * flops / t, "passes_per_s": passes / t}


SECTIONS = {"text": section_text, "images": section_images, "dna": section_dna, "model": section_model}


def goals(figures: dict) -> dict:
    t, i, m = figures.get("text", {}), figures.get("images", {}), figures.get("model", {})
    got = {"text_vs_st_default": t.get("text_vs_st_default"), "images_vs_dataloader": i.get("images_vs_dataloader"),
           "vit_b32_of_peak": m.get("vit_b32", {}).get("of_spec_peak"),
           "dna_of_peak": (figures.get("dna", {}).get("ingest_flop_per_s") or 0) / m["spec_peak_bf16"]
           if m.get("spec_peak_bf16") else None}
    return {k: {"goal": GOALS[k], "got": v, "met": None if v is None else v >= GOALS[k]} for k, v in got.items()}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models and slices: checks that it runs")
    ap.add_argument("--prepare", action="store_true", help="write the data, tokenizer and wheels to --data")
    ap.add_argument("--data", default=str(REPO / ".gpu"), help="the prepared folder (default .gpu)")
    ap.add_argument("--out", default=None, help="also copy the results JSON here (the device's $OUT)")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = ap.parse_args()
    if args.prepare:
        return prepare(Path(args.data))
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # load reports of the random checkpoints (no pooler: as intended)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite: no CUDA device here; run with --smoke for the CPU check")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    os.environ["EMBEDSTORE_MODEL_CACHE"] = str(tmp / "model-cache")  # ONNX exports of the random models: not kept
    ctx = Context(device, args.smoke, Path(args.data), tmp)
    figures: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
                     "torch": torch.__version__}
    try:
        for name in args.only:
            t0 = time.perf_counter()
            try:
                figures[name] = SECTIONS[name](ctx)
            except Exception:
                figures[name] = {"error": traceback.format_exc()}
                print(f"{name}: FAILED\n{figures[name]['error']}", flush=True)
            figures[name]["section_s"] = time.perf_counter() - t0
            for k, v in figures[name].items():
                if k != "error":
                    show(f"{name}: {k}", v if not isinstance(v, dict) else json.dumps(v, default=str)[:200])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["goals"] = goals(figures)
    for k, v in figures["goals"].items():
        show(f"goal {k}", "n/a" if v["got"] is None else v["got"], f">= {v['goal']}")
    if args.smoke:
        print("smoke run: CPU, tiny models; the figures check that every path runs, they are not GPU figures")
    if not args.smoke:  # smoke figures are not evidence: no result file
        path = write_results("gpu_suite", args, figures)
        if args.out:
            shutil.copy(path, Path(args.out) / path.name)
    failed = [k for k in SECTIONS if isinstance(figures.get(k), dict) and "error" in figures[k]]
    sys.exit(f"gpu_suite: sections failed: {failed}" if failed else 0)


if __name__ == "__main__":
    main()
