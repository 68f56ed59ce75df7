"""What every typed config shares: strict models and the node-role name pattern."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# A Ray custom resource name, as cluster.yaml declares them.
_ROLE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)
