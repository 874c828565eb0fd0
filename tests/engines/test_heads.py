"""Fusion heads, all held to the same checks: shape, masking, the all-absent row, gradients, ONNX parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tinymodels import HEAD_CONFIGS, HEAD_IDS, randomize, tiny_spec

from fusionstream.engines.export import FusionProbs, export_graph
from fusionstream.engines.fusion import HEADS, FusionHead, make_head
from fusionstream.engines.model import MultimodalModel, modality_dropout
from fusionstream.engines.spec import FUSION_HEADS, MODALITIES

D, C, B = 16, 5, 6

heads = pytest.mark.parametrize(("name", "options"), HEAD_CONFIGS, ids=HEAD_IDS)


def build(name: str, options: dict[str, Any], seed: int = 0) -> FusionHead:
    torch.manual_seed(seed)
    return randomize(make_head(name, D, C, **options)).eval()


def embeddings(size: int = B, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, D, generator=generator) for _ in MODALITIES]


#: Every presence pattern, twice, so each modality is absent in some rows and present in others.
ALL_MASKS = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)] * 2, dtype=torch.float32)


def test_registry_matches_spec() -> None:
    assert tuple(HEADS) == FUSION_HEADS  # model.json validation uses FUSION_HEADS without importing torch
    with pytest.raises(ValueError, match="unknown fusion head"):
        make_head("nope", D, C)


@heads
def test_output_shape_and_finite(name: str, options: dict[str, Any]) -> None:
    head = build(name, options)
    logits = head(*embeddings(), torch.ones(B, 3))
    assert logits.shape == (B, C)
    assert torch.isfinite(logits).all()


@heads
@pytest.mark.parametrize("junk", [1e6, -1e6, float("nan"), float("inf")], ids=["big", "-big", "nan", "inf"])
def test_absent_modality_has_no_influence(name: str, options: dict[str, Any], junk: float) -> None:
    head = build(name, options)
    emb = embeddings(len(ALL_MASKS))
    with torch.no_grad():
        reference = head(*emb, ALL_MASKS)
        for column in range(3):
            absent = ALL_MASKS[:, column] == 0
            spoiled = [e.clone() for e in emb]
            spoiled[column][absent] = junk
            torch.testing.assert_close(head(*spoiled, ALL_MASKS), reference, rtol=0, atol=1e-6)
    assert torch.isfinite(reference).all()


@heads
def test_present_modalities_do_influence(name: str, options: dict[str, Any]) -> None:
    # The converse of the test above, so a head that ignored everything could not pass both.
    head = build(name, options)
    emb = embeddings()
    mask = torch.ones(B, 3)
    with torch.no_grad():
        reference = head(*emb, mask)
        for column in range(3):
            changed = [e.clone() for e in emb]
            changed[column] = torch.randn(B, D) * 3
            assert not torch.allclose(head(*changed, mask), reference)


@heads
def test_all_absent_rows_are_finite_and_constant(name: str, options: dict[str, Any]) -> None:
    head = build(name, options)
    emb = embeddings()
    emb[0][0] = float("nan")
    with torch.no_grad():
        logits = head(*emb, torch.zeros(B, 3))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, logits[:1].expand(B, C))  # learned "nothing", independent of inputs


@heads
def test_forward_train_gives_scalar_aux_loss(name: str, options: dict[str, Any]) -> None:
    head = build(name, options).train()
    logits, aux = head.forward_train(*embeddings(), ALL_MASKS[:B])
    assert logits.shape == (B, C)
    assert aux.shape == () and torch.isfinite(aux) and aux >= 0
    if name == "vae":
        assert aux > 0  # KL + reconstruction


@heads
def test_gradients_reach_every_encoder(name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = MultimodalModel(tiny_spec(name, fusion_options=options)).train()
    spec = model.spec
    video = torch.rand(4, *spec.input_shapes["video"])
    audio = torch.rand(4, *spec.input_shapes["audio"]) * 2 - 1
    text = torch.randint(1, spec.text_buckets, (4, spec.text_max_len))
    logits, aux = model.forward_train(video, audio, text, torch.ones(4, 3))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + aux).backward()
    for part in (model.video_encoder, model.audio_encoder, model.text_encoder, model.head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reaches {type(part).__name__}"


@heads
def test_onnx_export_parity(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    import onnxruntime as ort

    fusion = FusionProbs(build(name, options)).eval()
    path = export_graph(
        fusion,
        (*embeddings(2), torch.ones(2, 3)),
        tmp_path / "fusion.onnx",
        input_names=[*MODALITIES, "mask"],
        output_name="probs",
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size, seed in ((1, 2), (5, 3), (len(ALL_MASKS), 4)):
        emb = embeddings(size, seed)
        mask = ALL_MASKS[:size] if size == len(ALL_MASKS) else (torch.rand(size, 3) < 0.6).float()
        for column in range(3):
            emb[column][mask[:, column] == 0] = float("nan")  # ONNX Runtime must mask exactly like torch
        with torch.no_grad():
            expected = fusion(*emb, mask).numpy()
        feeds = {name: e.numpy() for name, e in zip(MODALITIES, emb, strict=True)} | {"mask": mask.numpy()}
        got = session.run(["probs"], feeds)[0]
        assert got.shape == (size, C) and np.isfinite(got).all()
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_weighted_weights_renormalise_over_present() -> None:
    head = build("weighted", {})
    weights = head.modality_weights(ALL_MASKS)
    np.testing.assert_allclose(weights.sum(1).detach().numpy(), ALL_MASKS.amax(1).numpy(), rtol=1e-6)
    assert (weights[ALL_MASKS == 0] == 0).all()


def test_decision_vote_follows_a_lone_modality() -> None:
    head = build("decision", {"combine": "vote"})
    emb = embeddings()
    mask = torch.tensor([[0.0, 1.0, 0.0]]).expand(B, 3)
    with torch.no_grad():
        probs = torch.softmax(head(*emb, mask), dim=-1)
        own = head.modality_probs(*emb, mask)[:, 1]
    assert torch.equal(probs.argmax(1), own.argmax(1))
    assert (probs.amax(1) > 0.99).all()  # one vote is a unanimous vote


def test_vae_all_absent_posterior_is_the_prior() -> None:
    head = build("vae", {})
    mu, logvar = head.posterior(*embeddings(), torch.zeros(B, 3))
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(logvar, torch.zeros_like(logvar))


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_modality_dropout(p: float) -> None:
    mask = ALL_MASKS.repeat(50, 1)
    dropped = modality_dropout(mask, p, generator=torch.Generator().manual_seed(0))
    assert ((dropped == 1) <= (mask == 1)).all()  # never invents a modality
    had_any = mask.amax(1) > 0
    assert (dropped[had_any].amax(1) == 1).all()  # keep_one: never empties a row
    if p == 0.0:
        assert torch.equal(dropped, mask)
    if p == 1.0:
        assert (dropped[had_any].sum(1) == 1).all()
    assert torch.equal(modality_dropout(mask, 1.0, keep_one=False), torch.zeros_like(mask))
