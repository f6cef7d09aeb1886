"""Pair the H&E and IHC images of a QuPath project.

:func:`pair_images` groups a project's images into cases by a name pattern,
a pairs CSV or a metadata value and gives each IHC image its H&E partner
(:class:`ImagePair`), listing the images left out with the reason
(:class:`Pairing`). :func:`partner_of` applies the same rules to one image of
a list sent by a QuPath script (the server's pairing endpoint).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ProjectConfig
from ..errors import UserInputError
from .entries import ImageEntry

__all__ = ["ImagePair", "Pairing", "pair_images", "partner_of"]

_DEFAULT_CONFIG = ProjectConfig()


@dataclass(frozen=True)
class ImagePair:
    """One IHC image to score, with its H&E partner when there is one."""

    case: str
    ihc: ImageEntry
    he: ImageEntry | None = None


@dataclass(frozen=True)
class Pairing:
    """The pairs found and the images left out, each with the reason."""

    pairs: list[ImagePair]
    unpaired: list[tuple[ImageEntry, str]]
    method: str


def _is_he(stain: str | None, he_stains: Sequence[str]) -> bool:
    return stain is not None and stain.strip().casefold() in {s.casefold() for s in he_stains}


def _group_pairs(
    groups: dict[str, list[tuple[ImageEntry, str]]], he_stains: Sequence[str]
) -> tuple[list[ImagePair], list[tuple[ImageEntry, str]]]:
    pairs: list[ImagePair] = []
    unpaired: list[tuple[ImageEntry, str]] = []
    for case, members in groups.items():
        hes = [e for e, s in members if _is_he(s, he_stains)]
        ihcs = [e for e, s in members if not _is_he(s, he_stains)]
        if len(hes) > 1:
            names = ", ".join(e.name for e in hes)
            for e in ihcs:
                unpaired.append((e, f"case {case!r} has {len(hes)} H&E images ({names}); scored alone"))
                pairs.append(ImagePair(case, e, None))
            for e in hes:
                unpaired.append((e, f"case {case!r} has several H&E images; give a pairs CSV"))
            continue
        he = hes[0] if hes else None
        if not ihcs and he is not None:
            unpaired.append((he, f"case {case!r} has no IHC image"))
        for e in ihcs:
            if he is None:
                unpaired.append((e, f"case {case!r} has no H&E image; scored alone"))
            pairs.append(ImagePair(case, e, he))
    return pairs, unpaired


def pair_images(
    entries: Sequence[ImageEntry],
    *,
    pattern: str | None = None,
    pairs_csv: str | os.PathLike[str] | None = None,
    metadata_key: str | None = None,
    config: ProjectConfig = _DEFAULT_CONFIG,
) -> Pairing:
    """Pair H&E and IHC images by ``pattern`` (named groups ``case`` and ``stain``), a CSV or metadata.

    Without any of them every image is scored as IHC on its own, except
    images whose ``stain`` metadata names an H&E stain. The CSV has columns
    ``ihc`` and ``he`` (image names or entry IDs) and optionally ``case``.
    """
    chosen = [x for x in (pattern, pairs_csv, metadata_key) if x]
    if len(chosen) > 1:
        raise UserInputError(
            "choose one way to pair images", hint="give only one of --pair-pattern, --pairs, --pair-metadata"
        )
    if pairs_csv:
        return _pair_by_csv(entries, Path(pairs_csv))
    groups: dict[str, list[tuple[ImageEntry, str]]] = {}
    unmatched: list[tuple[ImageEntry, str]] = []
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserInputError(f"--pair-pattern is not a valid regular expression: {err}",
                                 hint="e.g. '(?P<case>.+)_(?P<stain>HE|HER2)'") from err
        if not {"case", "stain"} <= set(rx.groupindex):
            raise UserInputError(
                "--pair-pattern needs the named groups 'case' and 'stain'",
                hint="e.g. '(?P<case>.+)_(?P<stain>HE|HER2)'",
            )
        for e in entries:
            m = rx.fullmatch(e.stem) or rx.fullmatch(e.name) or rx.search(e.name)
            if m is None:
                unmatched.append((e, f"name does not match --pair-pattern {pattern!r}"))
                continue
            groups.setdefault(m.group("case"), []).append((e, m.group("stain")))
        pairs, unpaired = _group_pairs(groups, config.he_stains)
        return Pairing(pairs, unmatched + unpaired, "pattern")
    if metadata_key:
        for e in entries:
            case = e.metadata.get(metadata_key)
            if case is None:
                unmatched.append((e, f"no metadata value {metadata_key!r}"))
                continue
            stain = e.metadata.get(config.stain_metadata_key)
            groups.setdefault(case, []).append((e, stain or "IHC"))
        pairs, unpaired = _group_pairs(groups, config.he_stains)
        return Pairing(pairs, unmatched + unpaired, "metadata")
    pairs = []
    for e in entries:
        if _is_he(e.metadata.get(config.stain_metadata_key), config.he_stains):
            unmatched.append((e, "H&E image (stain metadata) without pairing; not scored"))
        else:
            pairs.append(ImagePair(e.stem, e, None))
    return Pairing(pairs, unmatched, "none")


def partner_of(ihc: str, images: Sequence[Mapping[str, Any]], *, pattern: str | None = None,
               metadata_key: str | None = None, config: ProjectConfig = _DEFAULT_CONFIG) -> dict[str, Any]:
    """The H&E partner of the image named ``ihc`` among ``images`` (name, id, metadata), by
    the rules of :func:`pair_images`: ``{"ihc", "he" (None: none), "case", "method", "reason"}``."""
    entries = [ImageEntry(entry_id=str(im.get("id") or k), name=str(im["name"]), uri=None, path=None,
                          exists=False, metadata=dict(im.get("metadata") or {}))
               for k, im in enumerate(images, start=1)]
    if not any(e.name == ihc for e in entries):
        raise UserInputError(f"{ihc!r} is not among the images sent",
                             hint="send the project's image list, the IHC image included")
    found = pair_images(entries, pattern=pattern, metadata_key=metadata_key, config=config)
    pair = next((p for p in found.pairs if p.ihc.name == ihc), None)
    reason = next((why for e, why in found.unpaired if e.name == ihc), None)
    if pair is not None and pair.he is None and reason is None:
        reason = "no pairing rule given: send pair_pattern or pair_metadata"
    return {"ihc": ihc, "he": pair.he.name if pair and pair.he else None,
            "case": pair.case if pair else None, "method": found.method,
            "reason": None if pair and pair.he else reason or "not paired"}


def _pair_by_csv(entries: Sequence[ImageEntry], path: Path) -> Pairing:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise UserInputError(f"cannot read pairs CSV {path}: {err}", hint="check the --pairs path") from err
    if not rows or "ihc" not in {k.strip().lower() for k in rows[0]}:
        raise UserInputError(
            f"pairs CSV {path} needs a header with columns 'ihc' and 'he' (optional 'case')",
            hint="e.g. 'case,ihc,he' then 'A1,A1_HER2.svs,A1_HE.svs'",
        )
    by_key: dict[str, ImageEntry] = {}
    for e in entries:
        by_key.setdefault(e.name, e)
        by_key.setdefault(e.stem, e)
        by_key.setdefault(e.entry_id, e)
    pairs: list[ImagePair] = []
    used: set[str] = set()
    missing: list[str] = []
    for n, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        ihc = by_key.get(row.get("ihc", ""))
        he_name = row.get("he", "")
        he = by_key.get(he_name) if he_name else None
        if ihc is None:
            missing.append(f"line {n}: ihc {row.get('ihc')!r}")
            continue
        if he_name and he is None:
            missing.append(f"line {n}: he {he_name!r}")
            continue
        pairs.append(ImagePair(row.get("case") or ihc.stem, ihc, he))
        used.update({ihc.entry_id} | ({he.entry_id} if he else set()))
    if missing:
        raise UserInputError(
            f"pairs CSV {path} names images not in the project: {'; '.join(missing[:5])}"
            + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""),
            hint="use the image names QuPath shows in the Project tab, or entry IDs",
        )
    unpaired = [(e, "not listed in the pairs CSV") for e in entries if e.entry_id not in used]
    return Pairing(pairs, unpaired, "csv")
