"""TFDS builder for the embedded corpus: CPython's own reference documentation.

Every CPython ships `pydoc_data.topics.topics`, a dict from a topic key ("assignment",
"class", "typesseq", ...) to the plain-text page for it (about 465 KB of English in
total). One example per key: `{"key": <topic key>, "text": <page text>}`. Nothing is
downloaded, so `download_and_prepare` works offline.

Split rule (deterministic across machines and Python processes):
  validation = keys whose `int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 10 == 0`
  train      = all other keys.
(`distill.data.split_for_key`). `hash()` is not used because it is salted per process.

The corpus depends on the Python version that builds it (3.11 and 3.12 document different
topics); the builder version stays 1.0.0 because the rule, not the text, is what we version.
"""
from __future__ import annotations

import importlib
import sys


def _ensure_importlib_resources():
  # tensorflow_datasets 4.9.x needs the `importlib_resources` backport when it locates a
  # builder's code, but does not declare it; the stdlib module has the same `abc` API.
  try:
    importlib.import_module("importlib_resources")
  except ImportError:
    sys.modules["importlib_resources"] = importlib.import_module("importlib.resources")


_ensure_importlib_resources()

import tensorflow_datasets as tfds  # noqa: E402  pylint: disable=g-import-not-at-top

from distill.data.splits import split_for_key  # noqa: E402  The rule `text:` globs share.


def _topics() -> dict[str, str]:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return dict(topics.topics)


class PydocTopics(tfds.core.GeneratorBasedBuilder):
  """CPython reference documentation topics, one document per topic."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "key": tfds.features.Text(),
            "text": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://docs.python.org/3/reference/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The corpus is on disk already.
    return {
        "train": self._generate_examples("train"),
        "validation": self._generate_examples("validation"),
    }

  def _generate_examples(self, split: str):
    for key, text in sorted(_topics().items()):
      if split_for_key(key) == split:
        yield key, {"key": key, "text": text}
