"""Storage of prompts, completions, annotators, assignments and labels (SQLAlchemy).

SQLite (WAL mode, every write transaction BEGIN IMMEDIATE so concurrent
writers queue instead of failing) by default; PostgreSQL by URL. Each label is
committed before the request returns. Races between annotators are settled by
unique constraints, not by locks, so the same code is correct on both:

- labels:      unique (item, annotator): nobody ranks an item twice;
- assignments: unique (item, annotator) and unique (item, slot) with slot < K:
               at most K annotators hold an item, so each item gets K labels.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, delete, event, exists, func, or_, select)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from rlhfkit.errors import UserError

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


class NotAssigned(Exception):
    """The item is not (or no longer) assigned to this annotator."""


class AlreadyLabelled(Exception):
    """This annotator already labelled the item."""


@dataclass(frozen=True)
class Who:
    id: int
    name: str
    role: str


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def make_engine(url: str):
    try:
        u = make_url(url)
    except ArgumentError:
        raise UserError(f"--db {url!r} is not a database URL; use e.g. sqlite:///feedback.db "
                        "or postgresql://user:password@host/dbname") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(u, pool_size=10, max_overflow=20, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front: a deferred read that later
        # writes can fail with "database is locked" instead of waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as e:
            raise UserError(f"cannot open database {safe_url(url)}: {e.orig}; check the URL and that "
                            "the server is running") from None
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self):
        self.engine.dispose()

    # ------------------------------------------------------------ setup

    def import_items(self, rows) -> tuple[int, int]:
        """Add (prompt, completions, meta) rows; returns (added, already present)."""
        added = present = 0
        with self.session.begin() as s:
            for prompt, completions, meta in rows:
                key = hashlib.sha256(json.dumps([prompt, completions], sort_keys=True).encode()).hexdigest()
                if s.scalar(select(Item.id).where(Item.key == key)) is not None:
                    present += 1
                    continue
                item = Item(key=key, prompt=prompt, meta=meta)
                item.completions = [Completion(position=i, text=t) for i, t in enumerate(completions)]
                s.add(item)
                added += 1
        return added, present

    def add_annotator(self, name: str, role: str = "annotator", new_token: bool = False) -> str:
        """Create an account (or give an existing one a new token); returns the token, shown once."""
        token = secrets.token_urlsafe(32)
        with self.session.begin() as s:
            who = s.scalar(select(Annotator).where(Annotator.name == name))
            if who is not None and not new_token:
                raise UserError(f"annotator {name!r} already exists; pass --new-token to replace their link")
            if who is None:
                s.add(Annotator(name=name, role=role, token_hash=hash_token(token)))
            else:
                who.token_hash = hash_token(token)
        return token

    def authenticate(self, token: str) -> Who | None:
        with self.session() as s:
            a = s.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token)))
            return Who(a.id, a.name, a.role) if a else None

    # ------------------------------------------------------------ assignment

    def next_item(self, who: Who, per_item: int, lease: timedelta) -> dict | None:
        """The item this annotator holds, or a newly claimed one; None when nothing is left."""
        for _attempt in range(50):  # bounded: each failed claim means someone else just took a slot
            with self.session.begin() as s:
                held = s.scalar(select(Assignment.item_id).where(
                    Assignment.annotator_id == who.id, Assignment.done.is_(False)).order_by(Assignment.id))
                if held is not None:
                    return self._view(s, who, held)
                cutoff = utcnow() - lease
                query = self._candidates(who, per_item, cutoff).limit(1)
                # On PostgreSQL, SKIP LOCKED sends concurrent annotators to different items
                # instead of queueing them on one slot (SQLite writers are serialized anyway);
                # only when every candidate is locked do we queue on one, so "none" means none.
                # (NO KEY UPDATE: a plain FOR UPDATE would also block the foreign-key check of a
                # queued claim on the same item, a deadlock.)
                candidate = s.scalar(query.with_for_update(skip_locked=True, key_share=True, of=Item))
                if candidate is None:
                    candidate = s.scalar(query)
                if candidate is None:
                    return None
                try:
                    with s.begin_nested():
                        if self._claim(s, who, candidate, per_item, cutoff):
                            return self._view(s, who, candidate)
                except IntegrityError:
                    pass  # lost a race for the slot; try again
        raise RuntimeError("could not claim an item after 50 attempts")

    @staticmethod
    def _active(cutoff):
        """Number of assignments that count against an item's K: done, or held within the lease."""
        return (select(func.count()).select_from(Assignment)
                .where(Assignment.item_id == Item.id, or_(Assignment.done.is_(True), Assignment.assigned_at > cutoff))
                .scalar_subquery())

    def _candidates(self, who: Who, per_item: int, cutoff):
        active = self._active(cutoff)
        mine = or_(exists().where(Label.item_id == Item.id, Label.annotator_id == who.id),
                   exists().where(Assignment.item_id == Item.id, Assignment.annotator_id == who.id))
        # Fullest items first, so items reach K labels (and exportable agreement) early.
        return select(Item.id).where(~mine, active < per_item).order_by(active.desc(), Item.id)

    @staticmethod
    def _claim(s: Session, who: Who, item_id: int, per_item: int, cutoff) -> bool:
        rows = s.execute(select(Assignment.id, Assignment.slot, Assignment.done, Assignment.assigned_at)
                         .where(Assignment.item_id == item_id)).all()
        free = [k for k in range(per_item) if k not in {r.slot for r in rows}]
        if free:
            slot = free[0]
        else:  # take over a slot left idle past the lease; the conditional delete settles races
            stale = [r for r in rows if not r.done and r.assigned_at <= cutoff]
            if not stale:
                return False
            gone = s.execute(delete(Assignment).where(Assignment.id == stale[0].id, Assignment.done.is_(False)))
            if gone.rowcount != 1:
                return False
            slot = stale[0].slot
        s.add(Assignment(item_id=item_id, annotator_id=who.id, slot=slot))
        s.flush()
        return True

    def _view(self, s: Session, who: Who, item_id: int) -> dict:
        item = s.get(Item, item_id)
        comps = [{"id": c.id, "text": c.text} for c in item.completions]
        random.Random(f"{who.id}:{item_id}").shuffle(comps)  # random order, stable across reloads
        return {"id": item.id, "prompt": item.prompt, "completions": comps}

    # ------------------------------------------------------------ labels

    def submit(self, who: Who, item_id: int, kind: str, ranking: list[list[int]] | None) -> None:
        """Store one label. ranking: groups of completion ids, best first; a group is a tie."""
        if kind not in KINDS:
            raise ValueError(f"unknown action {kind!r}; use one of {', '.join(KINDS)}")
        try:
            with self.session.begin() as s:
                if s.scalar(select(Label.id).where(Label.item_id == item_id, Label.annotator_id == who.id)):
                    raise AlreadyLabelled()
                held = s.scalar(select(Assignment).where(Assignment.item_id == item_id,
                                                         Assignment.annotator_id == who.id))
                if held is None:
                    raise NotAssigned()
                positions = {c.id: c.position for c in s.get(Item, item_id).completions}
                ranks = None
                if kind == "rank":
                    ranks = ranks_from_groups(ranking, positions)
                elif kind == "all_bad":
                    ranks = [1] * len(positions)  # a full tie: no pair prefers anything
                if kind == "skip":
                    s.delete(held)  # frees the slot for someone else
                else:
                    held.done = True
                s.add(Label(item_id=item_id, annotator_id=who.id, kind=kind, ranks=ranks))
        except IntegrityError:
            raise AlreadyLabelled() from None  # a concurrent duplicate of the same submit

    def progress(self, who: Who, per_item: int, lease: timedelta) -> dict:
        with self.session() as s:
            done = s.scalar(select(func.count()).select_from(Label).where(Label.annotator_id == who.id))
            held = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.annotator_id == who.id, Assignment.done.is_(False)))
            cutoff = utcnow() - lease
            open_ = s.scalar(select(func.count()).select_from(self._candidates(who, per_item, cutoff).subquery()))
        return {"done": done, "total": done + held + open_}

    def my_labels(self, who: Who) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(Label).where(Label.annotator_id == who.id).order_by(Label.id))
            return [{"item_id": r.item_id, "action": r.kind, "ranks": r.ranks,
                     "created_at": r.created_at.isoformat() + "Z"} for r in rows]

    def all_labels(self) -> list[dict]:
        """Every label with its item and annotator, for export and statistics."""
        with self.session() as s:
            q = (select(Label, Annotator.name, Item).join(Annotator, Label.annotator_id == Annotator.id)
                 .join(Item, Label.item_id == Item.id).order_by(Label.item_id, Annotator.name))
            return [{"item_id": item.id, "annotator": name, "kind": lab.kind, "ranks": lab.ranks,
                     "prompt": item.prompt, "completions": [c.text for c in item.completions],
                     "meta": item.meta, "created_at": lab.created_at.isoformat() + "Z"}
                    for lab, name, item in s.execute(q)]

    def counts(self, per_item: int) -> dict:
        with self.session() as s:
            n_items = s.scalar(select(func.count()).select_from(Item))
            done_per_item = (select(Label.item_id, func.count().label("n")).where(Label.kind != "skip")
                             .group_by(Label.item_id).subquery())
            complete = s.scalar(select(func.count()).select_from(done_per_item).where(done_per_item.c.n >= per_item))
            by_kind = dict(s.execute(select(Label.kind, func.count()).group_by(Label.kind)).all())
            people = s.execute(select(Annotator.name, Annotator.role, func.count(Label.id))
                               .outerjoin(Label, Label.annotator_id == Annotator.id)
                               .group_by(Annotator.id).order_by(Annotator.name)).all()
        return {"items": n_items, "items_complete": complete, "per_item": per_item,
                "labels": {k: by_kind.get(k, 0) for k in KINDS},
                "annotators": [{"name": n, "labels": c} for n, role, c in people if role == "annotator"]}


def ranks_from_groups(ranking, positions: dict[int, int]) -> list[int]:
    """Dense ranks per completion position from ordered groups of completion ids."""
    if not ranking or any(not isinstance(g, list) or not g for g in ranking):
        raise ValueError("ranking must be a non-empty list of non-empty groups of completion ids")
    flat = [cid for g in ranking for cid in g]
    if sorted(flat) != sorted(positions) or len(set(flat)) != len(flat):
        raise ValueError("ranking must name every completion of the item exactly once")
    ranks = [0] * len(positions)
    for rank, group in enumerate(ranking, 1):
        for cid in group:
            ranks[positions[cid]] = rank
    return ranks
