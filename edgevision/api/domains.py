"""Domain ids for the training API: each compact domain once for classification, once for detection.

The hosted service names its compact domains by fixed UUIDs that clients hard-code; the four our
domains correspond to keep the hosted ids and display names, so a script that looks up
``"General (compact)"`` or pastes its id works unchanged. The others get stable ids derived from
their edgevision names (``uuid5``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from runtimes.http_errors import ApiError

__all__ = ["ApiDomain", "api_domains", "domain_by_id", "domain_id", "TYPES"]

#: The hosted domain types: a project's task picks one.
TYPES = ("Classification", "ObjectDetection")

_HOSTED: dict[tuple[str, str], tuple[str, str]] = {
    ("general-compact", "Classification"): ("0732100f-1a38-4e49-a514-c9b44c697ab5", "General (compact)"),
    ("general-compact-s1", "Classification"): ("a1db07ca-a19a-4830-bae8-e004a42dc863", "General (compact) [S1]"),
    ("general-compact", "ObjectDetection"): ("a27d5ca5-bb19-49d8-a70a-fec086c47f5b", "General (compact)"),
    ("general-compact-s1", "ObjectDetection"): ("7ec2ac80-887b-48a6-8df9-8b1357765430", "General (compact) [S1]"),
}
_NAMESPACE = uuid.UUID("5b0c1f9e-4a77-4e1c-9d6b-6c1d2f3e4a50")


@dataclass(frozen=True)
class ApiDomain:
    """One domain as the API shows it."""

    id: str
    name: str  # the display name ("General (compact)")
    type: str  # Classification or ObjectDetection
    domain: str  # the edgevision domain name ("general-compact")
    description: str

    def to_json(self, platforms: list[str]) -> dict[str, Any]:
        """The hosted ``Domain`` object (plus ``edgevisionDomain``)."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "exportable": True,
            "enabled": True,
            "exportablePlatforms": platforms,
            "modelInformation": {"description": self.description},
            "edgevisionDomain": self.domain,
        }


def _display(name: str) -> str:
    # "landmarks-compact" -> "Landmarks (compact)"; "general-compact-mobilenetv2" -> "General (compact) [mobilenetv2]"
    head, _, tail = name.partition("-compact")
    text = f"{head.replace('-', ' ').title()} (compact)"
    return f"{text} [{tail.lstrip('-')}]" if tail else text


def api_domains() -> list[ApiDomain]:
    """Every registered edgevision domain, for each type, in registry order."""
    from edgevision.domains import list_domains

    out = []
    for kind in TYPES:
        for d in list_domains():
            hosted = _HOSTED.get((d.name, kind))
            if hosted:
                ident, display = hosted
            else:
                ident, display = str(uuid.uuid5(_NAMESPACE, f"{d.name}/{kind}")), _display(d.name)
            out.append(ApiDomain(ident, display, kind, d.name, d.description))
    return out


def domain_by_id(domain_id: str) -> ApiDomain:
    """The domain with this id.

    Raises:
        ApiError: 400 ``BadRequestDomainInvalid`` naming the id (GET /domains lists them).
    """
    for d in api_domains():
        if d.id.lower() == domain_id.strip().lower():
            return d
    raise ApiError(400, "BadRequestDomainInvalid", f"no domain with id {domain_id!r}; GET /domains lists them")


def domain_id(domain: str, project_type: str) -> str:
    """The id of an edgevision domain for a project type (multiclass/multilabel/detection)."""
    kind = "ObjectDetection" if project_type == "detection" else "Classification"
    for d in api_domains():
        if d.domain == domain and d.type == kind:
            return d.id
    raise KeyError(domain)
