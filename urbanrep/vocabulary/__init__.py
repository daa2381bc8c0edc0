"""Fixed, versioned category vocabularies: the same feature columns for every city.

A region graph has one feature column per category of a layer (POI categories, land-use and
road classes). Left to the data, two cities get different columns and a model trained on one
cannot embed the other. A vocabulary fixes the class list of each layer and says how source
tags map onto it; a bundle that declares the lists (``CityBundle.categories``) gets exactly
those columns, in that order, whether or not the city has every class.

The shipped vocabulary ``urbanrep-osm/1`` (``urbanrep/vocabulary/urbanrep-osm-1.json``) maps
OpenStreetMap tags (``amenity=cafe``) and Geofabrik ``fclass`` names (``cafe``) onto 40 POI
categories, 16 land-use/building classes and 9 road classes. Released versions never change;
a changed vocabulary is a new file with the next version number.

>>> from urbanrep.vocabulary import load_vocabulary
>>> vocab = load_vocabulary()                     # the latest urbanrep-osm
>>> vocab.layer("pois").match({"amenity": "cafe"})
'cafe'
>>> classes, unmapped = vocab.layer("pois").map_fclass(["cafe", "bench", "tower"])
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from urbanrep.errors import UrbanRepError

__all__ = ["DEFAULT_VOCABULARY", "LayerVocabulary", "Vocabulary", "available_vocabularies", "load_vocabulary"]

#: Name of the vocabulary ``urbanrep prepare osm`` uses.
DEFAULT_VOCABULARY = "urbanrep-osm"
_FILE = re.compile(r"^(?P<name>[a-z0-9_-]+?)-(?P<version>\d+)\.json$")


def _clean(value: str) -> str:
    """A tag value as matched: the part before the first ``;`` without surrounding spaces."""
    return str(value).split(";", 1)[0].strip()


@dataclass(frozen=True)
class LayerVocabulary:
    """The classes of one bundle layer and the rules mapping source tags onto them.

    Attributes:
        layer: Bundle layer (``"pois"``, ``"landuse"``, ``"roads"``).
        column: Layer column holding the class (``"category"`` or ``"class"``).
        keys: OSM tag keys read for this layer, in priority order.
        classes: Class names in column order.
        exact: ``(key, value)`` -> class.
        wildcard: ``key`` -> class for any value of that key.
        fclass: Geofabrik ``fclass`` -> class.
    """

    layer: str
    column: str
    keys: tuple[str, ...]
    classes: tuple[str, ...]
    exact: Mapping[tuple[str, str], str] = field(repr=False)
    wildcard: Mapping[str, str] = field(repr=False)
    fclass: Mapping[str, str] = field(repr=False)

    def match(self, tags: Mapping[str, str] | Any) -> str | None:
        """Class of an OSM object from its tags (any mapping, e.g. an osmium ``TagList``).

        An exact ``key=value`` rule of any key wins over a ``key=*`` rule; among rules of one
        kind the first key of :attr:`keys` the object has decides. ``None``: no rule matches.
        """
        fallback = None
        for key in self.keys:
            if key in tags:
                value = _clean(tags[key])
                hit = self.exact.get((key, value))
                if hit is not None:
                    return hit
                if fallback is None:
                    fallback = self.wildcard.get(key)
        return fallback

    def match_tag(self, tag: str) -> str | None:
        """Class of one ``"key=value"`` string (``None`` when no rule matches)."""
        key, _, value = str(tag).partition("=")
        return self.exact.get((key, _clean(value))) or self.wildcard.get(key)

    def map_tags(self, tags: Iterable[str]) -> tuple[list[str | None], Counter[str]]:
        """Map ``"key=value"`` strings; returns the classes (``None`` if unmapped) and the unmapped counts."""
        return self._map(tags, self.match_tag)

    def map_fclass(self, names: Iterable[str]) -> tuple[list[str | None], Counter[str]]:
        """Map Geofabrik ``fclass`` names; returns the classes (``None`` if unmapped) and the unmapped counts."""
        return self._map(names, lambda n: self.fclass.get(str(n).strip()))

    @staticmethod
    def _map(values: Iterable[str], rule: Any) -> tuple[list[str | None], Counter[str]]:
        cache_: dict[str, str | None] = {}
        out: list[str | None] = []
        unmapped: Counter[str] = Counter()
        for v in values:
            s = str(v)
            if s not in cache_:
                cache_[s] = rule(s)
            hit = cache_[s]
            out.append(hit)
            if hit is None:
                unmapped[s] += 1
        return out, unmapped


@dataclass(frozen=True)
class Vocabulary:
    """A named, versioned set of :class:`LayerVocabulary` (one per layer).

    Attributes:
        name: ``"urbanrep-osm"``.
        version: Integer version; released versions never change.
        layers: Layer name -> its vocabulary.
        description: What the vocabulary is and its matching rules.
    """

    name: str
    version: int
    layers: Mapping[str, LayerVocabulary]
    description: str = ""

    @property
    def id(self) -> str:
        """``"name/version"``, as recorded in a bundle's provenance."""
        return f"{self.name}/{self.version}"

    def layer(self, name: str) -> LayerVocabulary:
        """One layer's vocabulary; a clear error for a layer it does not cover."""
        if name not in self.layers:
            raise UrbanRepError(f"vocabulary {self.id} has no layer {name!r}; it covers {', '.join(self.layers)}")
        return self.layers[name]

    def categories(self, layers: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Class lists per layer, the value of :attr:`urbanrep.bundle.CityBundle.categories`."""
        names = self.layers if layers is None else layers
        return {lay: list(self.layer(lay).classes) for lay in names}


def _parse(doc: dict[str, Any], source: str) -> Vocabulary:
    try:
        layers: dict[str, LayerVocabulary] = {}
        for lay, spec in doc["layers"].items():
            exact: dict[tuple[str, str], str] = {}
            wildcard: dict[str, str] = {}
            fcl: dict[str, str] = {}
            classes = []
            for entry in spec["classes"]:
                cls = entry["name"]
                if cls in classes:
                    raise UrbanRepError(f"{source}: layer {lay!r} lists class {cls!r} twice")
                classes.append(cls)
                for rule in entry.get("osm", []):
                    key, sep, value = rule.partition("=")
                    if not sep:
                        raise UrbanRepError(f"{source}: rule {rule!r} of class {cls!r} is not 'key=value' or 'key=*'")
                    target = wildcard if value == "*" else exact
                    k: Any = key if value == "*" else (key, value)
                    if k in target:
                        raise UrbanRepError(f"{source}: rule {rule!r} maps to {target[k]!r} and {cls!r}")
                    target[k] = cls
                for name in entry.get("fclass", []):
                    if name in fcl:
                        raise UrbanRepError(f"{source}: fclass {name!r} maps to {fcl[name]!r} and {cls!r}")
                    fcl[name] = cls
            layers[lay] = LayerVocabulary(layer=lay, column=spec["column"], keys=tuple(spec["keys"]),
                                          classes=tuple(classes), exact=exact, wildcard=wildcard, fclass=fcl)
        return Vocabulary(name=doc["name"], version=int(doc["version"]), layers=layers,
                          description=doc.get("description", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise UrbanRepError(f"{source}: not a valid urbanrep vocabulary ({exc!r})") from exc


def available_vocabularies() -> dict[str, list[int]]:
    """Vocabularies shipped in the package: name -> sorted versions."""
    out: dict[str, list[int]] = {}
    for item in resources.files(__name__).iterdir():
        m = _FILE.match(item.name)
        if m:
            out.setdefault(m["name"], []).append(int(m["version"]))
    return {k: sorted(v) for k, v in sorted(out.items())}


@cache
def load_vocabulary(name: str = DEFAULT_VOCABULARY, version: int | None = None) -> Vocabulary:
    """Load a shipped vocabulary; ``name`` may be ``"name/version"``; ``version=None``: the latest.

    Raises:
        UrbanRepError: if no such vocabulary (or version) ships with this urbanrep.
    """
    if "/" in name:
        name, _, v = name.partition("/")
        if not v.isdigit():
            raise UrbanRepError(f"vocabulary {name}/{v}: the version must be an integer (e.g. {name}/1)")
        version = int(v)
    shipped = available_vocabularies()
    if name not in shipped:
        raise UrbanRepError(f"unknown vocabulary {name!r}; shipped: {', '.join(shipped) or 'none'}")
    if version is None:
        version = shipped[name][-1]
    if version not in shipped[name]:
        raise UrbanRepError(f"vocabulary {name} has no version {version}; this urbanrep ships versions "
                            f"{', '.join(map(str, shipped[name]))} (a newer urbanrep may ship it)")
    fname = f"{name}-{version}.json"
    text = (resources.files(__name__) / fname).read_text(encoding="utf-8")
    return _parse(json.loads(text), fname)
