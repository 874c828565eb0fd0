"""Putting stage-1 encoders and a stage-2 head together as one model, and exporting it checked."""

from __future__ import annotations

from pathlib import Path

from fusionstream.engines.spec import ModelSpec


def assemble(encoders, head_name: str, head, spec: ModelSpec):
    """The encoders of stage 1 with a stage-2 head, as one ``MultimodalModel``."""
    from fusionstream.engines.model import MultimodalModel

    model = MultimodalModel(spec.replace(fusion=head_name))
    state = {k: v for k, v in encoders.state_dict().items() if not k.startswith("head.")}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    model.load_state_dict(state)
    model.eval()
    return model


def export_dir(model, spec: ModelSpec, out: Path) -> dict[str, float]:
    from fusionstream.engines.export import export_checked

    return export_checked(model, spec, out)  # checked before it replaces anything in ``out``
