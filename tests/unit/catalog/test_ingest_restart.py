"""A restarted catalog resumes its read model in its own consumer group; only an empty read model
starts a new group (and so reads the topic from offset 0)."""

from __future__ import annotations

from services.catalog.ingest import Ingest

NO_BROKER = "127.0.0.1:1"  # constructing the consumer connects nowhere


def test_a_restarted_catalog_keeps_its_read_model_id_and_consumer_group(tmp_path):
    first = Ingest(NO_BROKER, tmp_path / "catalog.sqlite")
    first.consumer.store.close()
    again = Ingest(NO_BROKER, tmp_path / "catalog.sqlite")
    assert (again.model_id, again.group) == (first.model_id, first.group)
    assert Ingest(NO_BROKER, tmp_path / "empty.sqlite").group != first.group
