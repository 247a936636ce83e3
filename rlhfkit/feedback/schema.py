"""The feedback database's tables (SQLAlchemy declarative): items, their completions, annotators,
assignments (who holds which item's slot) and labels. `Store` reads and writes them."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

KINDS = ("rank", "skip", "all_bad")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC: SQLite keeps no zone


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # only hashes are stored


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # content hash: re-import adds nothing
    prompt: Mapped[object] = mapped_column(JSON)  # text, or a list of chat messages
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # extra keys of the input row
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completions: Mapped[list["Completion"]] = relationship(order_by="Completion.position", lazy="selectin")


class Completion(Base):
    __tablename__ = "completions"
    __table_args__ = (UniqueConstraint("item_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # index in the imported row
    text: Mapped[str] = mapped_column(Text)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")  # or "admin"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"), UniqueConstraint("item_id", "slot"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    done: Mapped[bool] = mapped_column(Boolean, default=False)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # rank | skip | all_bad
    ranks: Mapped[list | None] = mapped_column(JSON, nullable=True)  # per completion position; None for skip
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def item_key(prompt, completions) -> str:
    """Content hash of an imported row: importing the same row again adds nothing."""
    return hashlib.sha256(json.dumps([prompt, completions], sort_keys=True).encode()).hexdigest()
