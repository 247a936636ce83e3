"""Storage of prompts, completions, annotators, assignments and labels (SQLAlchemy).

SQLite (WAL mode) by default; PostgreSQL by URL. Each label is committed before
the request returns. Transactions are short and of two kinds:

- reads (token lookup, progress, the search for an item to hand out, statistics)
  run in plain transactions: on SQLite a deferred BEGIN, which under WAL never
  waits for a writer and never blocks one;
- writes (a claim, a label, a chunk of an import) are `Store.write()`: on SQLite
  BEGIN IMMEDIATE (the write lock up front, so a read-then-write transaction
  queues instead of failing half-way) behind a per-process lock, so this
  process's writers queue in turn instead of polling SQLite's busy handler.

Races between annotators are settled by unique constraints and row locks, so the
same code is correct on both databases:

- labels:      unique (item, annotator): nobody ranks an item twice;
- assignments: unique (item, annotator) and unique (item, slot) with slot < K:
               at most K annotators hold an item, so each item gets K labels;
- a submit locks its assignment (SELECT ... FOR UPDATE on PostgreSQL; SQLite
  writers are serialized), so a rival taking over an idle slot either waits
  for the label or finds the slot gone, never a half-deleted row.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import JSON, bindparam, case, delete, exists, func, insert, or_, select, union, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from rlhfkit.errors import UserError
from rlhfkit.feedback.engine import WRITE, make_engine, safe_url
from rlhfkit.feedback.schema import (KINDS, Annotator, Assignment, Base, Completion, Item, Label, hash_token, item_key,
                                     utcnow)

# ---------------------------------------------------------------- the statements of the hot path
# Built once, with bind parameters: building a statement costs more Python time than running it
# (progress: 4 ms built per call, 0.6 ms prebuilt). Parameters: me (annotator id), item, cutoff
# (assignments older than this have lapsed), k (annotators per item), aid (an assignment id), now.

def _prebuilt():
    me, item, cutoff, k = bindparam("me"), bindparam("item"), bindparam("cutoff"), bindparam("k")
    active = case((or_(Assignment.done.is_(True), Assignment.assigned_at > cutoff), 1), else_=0)
    # Items with assignments, none of them this annotator's: (item_id, active) per item, where
    # active counts the assignments that hold a slot (done, or within the lease).
    in_play = (select(Assignment.item_id.label("item_id"), func.sum(active).label("active"))
               .group_by(Assignment.item_id)
               .having(func.sum(case((Assignment.annotator_id == me, 1), else_=0)) == 0)).subquery()
    labelled_by_me = exists().where(Label.item_id == in_play.c.item_id, Label.annotator_id == me)
    mine = union(select(Label.item_id).where(Label.annotator_id == me),
                 select(Assignment.item_id).where(Assignment.annotator_id == me)).subquery()
    count = lambda q: select(func.count()).select_from(q).scalar_subquery()  # noqa: E731
    held = (select(Assignment.id, Assignment.item_id, Assignment.assigned_at)
            .where(Assignment.annotator_id == me, Assignment.done.is_(False)).order_by(Assignment.id).limit(1))
    return {
        "authenticate": select(Annotator.id, Annotator.name, Annotator.role)
        .where(Annotator.token_hash == bindparam("h")),
        "held": held,
        "held_locked": held.with_for_update(),
        # Candidates, best first: items in play with a free slot (fullest first), and untouched
        # items in id order (an index walk). The cost grows with the assignments, not the items.
        "in_play": select(in_play.c.item_id, in_play.c.active)
        .where(in_play.c.active < k, ~labelled_by_me).order_by(in_play.c.active.desc(), in_play.c.item_id)
        .limit(CANDIDATES),
        "untouched": select(Item.id).where(~exists().where(Assignment.item_id == Item.id),
                                           ~exists().where(Label.item_id == Item.id, Label.annotator_id == me))
        .order_by(Item.id).limit(CANDIDATES),
        # PostgreSQL: lock the item so that rival claims go elsewhere (SKIP LOCKED) instead of
        # queueing; NO KEY UPDATE, so a label's foreign-key check on the item is not blocked.
        "lock_item": select(Item.id).where(Item.id == item).with_for_update(skip_locked=True, key_share=True),
        "lock_item_wait": select(Item.id).where(Item.id == item).with_for_update(key_share=True),
        "my_label": select(Label.id).where(Label.item_id == item, Label.annotator_id == me),
        "slots": select(Assignment.id, Assignment.annotator_id, Assignment.slot, Assignment.done,
                        Assignment.assigned_at).where(Assignment.item_id == item),
        "take_stale": delete(Assignment).where(Assignment.id == bindparam("aid"), Assignment.done.is_(False)),
        "assign": insert(Assignment).values(item_id=item, annotator_id=me, slot=bindparam("slot"),
                                            assigned_at=bindparam("now"), done=False),
        "renew": update(Assignment).where(Assignment.id == bindparam("aid"), Assignment.done.is_(False))
        .values(assigned_at=bindparam("now")),
        "prompt": select(Item.prompt).where(Item.id == item),
        "completions": select(Completion.id, Completion.position, Completion.text)
        .where(Completion.item_id == item).order_by(Completion.position),
        # A submit locks its assignment (FOR UPDATE on PostgreSQL): a rival taking over the slot
        # after the lease waits for the label, then finds the assignment done; or it deleted the
        # row first, and the submit finds nothing: a clean NotAssigned, never a vanished row.
        "my_assignment": select(Assignment.id, Assignment.done)
        .where(Assignment.item_id == item, Assignment.annotator_id == me).with_for_update(),
        "mark_done": update(Assignment).where(Assignment.id == bindparam("aid")).values(done=True),
        "drop_assignment": delete(Assignment).where(Assignment.id == bindparam("aid")),
        "add_label": insert(Label).values(item_id=item, annotator_id=me, kind=bindparam("kind"),
                                          ranks=bindparam("ranks", type_=JSON), created_at=bindparam("now")),
        # progress, in one round trip: total = done + held + items - mine - full-and-not-mine
        "progress": select(
            count(select(Label.id).where(Label.annotator_id == me).subquery()).label("done"),
            count(select(Assignment.id).where(Assignment.annotator_id == me, Assignment.done.is_(False))
                  .subquery()).label("held"),
            count(select(Item.id).subquery()).label("items"),
            count(mine).label("mine"),
            count(select(in_play.c.item_id).where(in_play.c.active >= k, ~labelled_by_me).subquery()).label("full")),
    }


CANDIDATES = 8  # items a claim tries in one write transaction before searching again


class NotAssigned(Exception):
    """The item is not (or no longer) assigned to this annotator."""


class AlreadyLabelled(Exception):
    """This annotator already labelled the item."""


@dataclass(frozen=True)
class Who:
    id: int
    name: str
    role: str


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as e:
            raise UserError(f"cannot open database {safe_url(url)}: {e.orig}; check the URL and that "
                            "the server is running") from None
        self.sqlite = self.engine.dialect.name == "sqlite"
        # `session` is for writes (on SQLite each of its transactions is BEGIN IMMEDIATE);
        # `read_session` for reads. Prefer `write()` / `read()`, which also take the process's write lock.
        self.session = sessionmaker(self.engine.execution_options(**{WRITE: True}), expire_on_commit=False)
        self.read_session = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if self.sqlite else contextlib.nullcontext()
        self._writer = self.engine.execution_options(**{WRITE: True})
        self.q = _prebuilt()

    def close(self):
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self):
        """A write transaction, committed on leaving (rolled back on an exception)."""
        with self._write_lock, self.session.begin() as s:
            yield s

    @contextlib.contextmanager
    def read(self):
        """A read-only transaction (a snapshot; on SQLite it takes no lock)."""
        with self.read_session() as s:
            yield s

    # The hot path (each request) uses Core connections: an ORM session costs more than its query.
    @contextlib.contextmanager
    def _reading(self):
        with self.engine.connect() as c:
            yield c

    @contextlib.contextmanager
    def _writing(self):
        with self._write_lock, self._writer.begin() as c:
            yield c

    # ------------------------------------------------------------ setup

    def import_items(self, rows, chunk: int | None = None, pause: float | None = None) -> tuple[int, int]:
        """Add (prompt, completions, meta) rows; returns (added, already present).

        Rows go in chunks (default 200 rows on SQLite, 1000 on PostgreSQL), each its own short
        write transaction, so that a server running on the same database keeps answering: SQLite
        has one writer at a time, and one long import transaction would hold it for as long as
        the import takes. After each chunk the import pauses, by default (pause=None) as long as
        the chunk took: waiting SQLite writers get in, and on either database the server gets at
        least half of the machine. An interrupted import is finished by running it again: stored
        rows are skipped.
        """
        chunk = chunk or (200 if self.sqlite else 1000)
        if pause is None:
            pause = -1.0  # as long as the chunk took
        added = present = 0
        seen: set[str] = set()
        batch: list[tuple] = []

        def flush():
            nonlocal added, present
            t0 = time.monotonic()
            a = self._import_chunk(batch)
            added, present = added + a, present + len(batch) - a
            batch.clear()
            wait = time.monotonic() - t0 if pause < 0 else pause
            if wait > 0:
                time.sleep(min(wait, 1.0))

        for prompt, completions, meta in rows:
            key = item_key(prompt, completions)
            if key in seen:  # the same row twice in one file
                present += 1
                continue
            seen.add(key)
            batch.append((key, prompt, completions, meta))
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        return added, present

    def _import_chunk(self, batch) -> int:
        """Insert the rows of `batch` not stored yet, in one transaction; returns how many were new."""
        for attempt in range(10):
            try:
                with self._writing() as c:
                    stored = set(c.execute(select(Item.key).where(Item.key.in_([b[0] for b in batch]))).scalars())
                    new = [b for b in batch if b[0] not in stored]
                    if new:
                        now = utcnow()
                        ids = c.execute(insert(Item).returning(Item.id, sort_by_parameter_order=True),
                                        [{"key": k, "prompt": p, "meta": m, "created_at": now}
                                         for k, p, _, m in new]).scalars().all()
                        # RETURNING makes SQLAlchemy batch the rows into multi-row INSERTs on PostgreSQL
                        # (psycopg's executemany would send one statement per completion).
                        c.execute(insert(Completion) if self.sqlite else insert(Completion).returning(Completion.id),
                                  [{"item_id": i, "position": pos, "text": t}
                                   for i, (_, _, comps, _) in zip(ids, new) for pos, t in enumerate(comps)])
                return len(new)
            except IntegrityError:
                continue  # a concurrent import stored some of these rows first: look again
            except OperationalError as e:
                if not self.sqlite or "locked" not in str(e.orig) or attempt == 9:
                    raise
                time.sleep(0.5)  # the server kept the write lock past the busy timeout: try the chunk again
        raise RuntimeError("import chunk kept conflicting with a concurrent import")

    def add_annotator(self, name: str, role: str | None = None, new_token: bool = False) -> str:
        """Create an account (or give an existing one a new token); returns the token, shown once.

        role: "annotator" or "admin"; None keeps an existing account's role (a new one is an
        annotator). An account made admin gives back the items it held, since admins label nothing.
        """
        if role not in (None, "annotator", "admin"):
            raise ValueError(f"unknown role {role!r}")
        token = secrets.token_urlsafe(32)
        with self.write() as s:
            who = s.scalar(select(Annotator).where(Annotator.name == name))
            if who is not None and not new_token:
                raise UserError(f"annotator {name!r} already exists ({who.role}); pass --new-token to replace "
                                "their link" + (" and set the role" if role not in (None, who.role) else ""))
            if who is None:
                s.add(Annotator(name=name, role=role or "annotator", token_hash=hash_token(token)))
            else:
                who.token_hash = hash_token(token)
                if role is not None and role != who.role:
                    who.role = role
                    if role == "admin":
                        s.execute(delete(Assignment).where(Assignment.annotator_id == who.id,
                                                           Assignment.done.is_(False)))
        return token

    def annotator(self, name: str) -> Who | None:
        with self.read() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            return Who(a.id, a.name, a.role) if a else None

    def authenticate(self, token: str) -> Who | None:
        with self._reading() as c:
            a = c.execute(self.q["authenticate"], {"h": hash_token(token)}).first()
            return Who(a.id, a.name, a.role) if a else None

    # ------------------------------------------------------------ assignment

    def next_item(self, who: Who, per_item: int, lease: timedelta) -> dict | None:
        """The item this annotator holds, or a newly claimed one; None when nothing is left.

        Reopening a held item renews its lease (whoever has it open is working on it); to keep
        reloads cheap the renewal is written only once a tenth of the lease has passed.
        """
        q, me = self.q, {"me": who.id}
        with self._reading() as c:  # a reload: no write at all; else the search, which takes no lock
            held = c.execute(q["held"], me).first()
            if held is not None and held.assigned_at > utcnow() - lease / 10:
                return self._view(c, who, held.item_id)
            # (held but due for renewal: no search yet; if the item went meanwhile, search below)
            candidates = None if held is not None else self._candidates(c, who, per_item, utcnow() - lease)
        for attempt in range(50):  # bounded; from the third round on, each round makes progress
            cutoff = utcnow() - lease
            # The first rounds search outside the write lock and, on PostgreSQL, skip items that rival
            # claims hold locked. After two lost rounds: search under the write lock (on SQLite a
            # view nobody can change under us) and wait for the best item's lock instead of skipping.
            careful = attempt >= 2
            if attempt and not careful:
                with self._reading() as c:
                    candidates = self._candidates(c, who, per_item, cutoff)
            with self._writing() as c:
                now_held = c.execute(q["held_locked"], me).first()
                if now_held is not None:
                    c.execute(q["renew"], {"aid": now_held.id, "now": utcnow()})
                    return self._view(c, who, now_held.item_id)
                if careful or candidates is None:
                    candidates = self._candidates(c, who, per_item, cutoff)[:1 if careful else CANDIDATES]
                if not candidates:
                    return None
                for item_id in candidates:
                    try:
                        with c.begin_nested():
                            if self._claim(c, who, item_id, per_item, cutoff, wait=careful):
                                return self._view(c, who, item_id)
                    except IntegrityError:
                        pass  # lost a race for the slot (PostgreSQL); try the next candidate
        raise RuntimeError("could not claim an item after 50 attempts")

    def _candidates(self, c, who: Who, per_item: int, cutoff) -> list[int]:
        """Up to CANDIDATES items this annotator could claim, best first: the fullest, then the oldest."""
        params = {"me": who.id, "cutoff": cutoff, "k": per_item}
        in_play = c.execute(self.q["in_play"], params).all()
        untouched = c.execute(self.q["untouched"], params).scalars().all()
        ranked = sorted([(-int(active), item_id) for item_id, active in in_play] + [(0, i) for i in untouched])
        return [item_id for _, item_id in ranked[:CANDIDATES]]

    def _claim(self, c, who: Who, item_id: int, per_item: int, cutoff, wait: bool = False) -> bool:
        """Take a slot of the item if it is still free for this annotator (inside a write transaction).

        wait: wait for a rival claim's lock on the item (PostgreSQL) instead of passing it by. Only
        with a single candidate, so that a waiting claim holds no other item's lock (no deadlock).
        """
        q, params = self.q, {"me": who.id, "item": item_id}
        if c.execute(q["lock_item_wait" if wait else "lock_item"], params).first() is None:
            return False  # locked by a rival claim (PostgreSQL), or gone: try the next candidate
        if c.execute(q["my_label"], params).first() is not None:
            return False  # skipped (or labelled) by this annotator before
        rows = c.execute(q["slots"], params).all()
        if any(r.annotator_id == who.id for r in rows):
            return False
        if sum(bool(r.done) or r.assigned_at > cutoff for r in rows) >= per_item:
            return False
        free = [k for k in range(per_item) if k not in {r.slot for r in rows}]
        if free:
            slot = free[0]
        else:  # take over a slot left idle past the lease; the conditional delete settles races
            stale = [r for r in rows if not r.done and r.assigned_at <= cutoff]
            if not stale or c.execute(q["take_stale"], {"aid": stale[0].id}).rowcount != 1:
                return False
            slot = stale[0].slot
        c.execute(q["assign"], {**params, "slot": slot, "now": utcnow()})
        return True

    def _view(self, c, who: Who, item_id: int) -> dict:
        prompt = c.execute(self.q["prompt"], {"item": item_id}).scalar_one()
        comps = [{"id": r.id, "text": r.text} for r in c.execute(self.q["completions"], {"item": item_id})]
        random.Random(f"{who.id}:{item_id}").shuffle(comps)  # random order, stable across reloads
        return {"id": item_id, "prompt": prompt, "completions": comps}

    # ------------------------------------------------------------ labels

    def submit(self, who: Who, item_id: int, kind: str, ranking: list[list[int]] | None) -> None:
        """Store one label. ranking: groups of completion ids, best first; a group is a tie."""
        if kind not in KINDS:
            raise ValueError(f"unknown action {kind!r}; use one of {', '.join(KINDS)}")
        q, params = self.q, {"me": who.id, "item": item_id}
        try:
            with self._writing() as c:
                held = c.execute(q["my_assignment"], params).first()  # locked: see the statement
                # After the lock (a concurrent duplicate of this submit may have just committed):
                if held is not None and held.done or c.execute(q["my_label"], params).first() is not None:
                    raise AlreadyLabelled()
                if held is None:
                    raise NotAssigned()
                positions = {r.id: r.position for r in c.execute(q["completions"], params)}
                ranks = None
                if kind == "rank":
                    ranks = ranks_from_groups(ranking, positions)
                elif kind == "all_bad":
                    ranks = [1] * len(positions)  # a full tie: no pair prefers anything
                # skip: the assignment goes, which frees the slot for someone else
                gone = c.execute(q["drop_assignment" if kind == "skip" else "mark_done"], {"aid": held.id})
                if gone.rowcount != 1:
                    raise NotAssigned()  # (cannot happen under the lock; never store a label without it)
                c.execute(q["add_label"], {**params, "kind": kind, "ranks": ranks, "now": utcnow()})
        except IntegrityError:
            raise AlreadyLabelled() from None  # a concurrent duplicate of the same submit

    def progress(self, who: Who, per_item: int, lease: timedelta) -> dict:
        """{"done": labels given, "total": done + held + items still open to this annotator}."""
        with self._reading() as c:
            r = c.execute(self.q["progress"], {"me": who.id, "k": per_item, "cutoff": utcnow() - lease}).one()
        return {"done": r.done, "total": r.done + r.held + r.items - r.mine - r.full}

    def my_labels(self, who: Who) -> list[dict]:
        with self.read() as s:
            rows = s.scalars(select(Label).where(Label.annotator_id == who.id).order_by(Label.id))
            return [{"item_id": r.item_id, "action": r.kind, "ranks": r.ranks,
                     "created_at": r.created_at.isoformat() + "Z"} for r in rows]

    def all_labels(self) -> list[dict]:
        """Every label with its item and annotator, for export and statistics."""
        with self.read() as s:
            q = (select(Label, Annotator.name, Item).join(Annotator, Label.annotator_id == Annotator.id)
                 .join(Item, Label.item_id == Item.id).order_by(Label.item_id, Annotator.name))
            return [{"item_id": item.id, "annotator": name, "kind": lab.kind, "ranks": lab.ranks,
                     "prompt": item.prompt, "completions": [c.text for c in item.completions],
                     "meta": item.meta, "created_at": lab.created_at.isoformat() + "Z"}
                    for lab, name, item in s.execute(q)]

    def counts(self, per_item: int) -> dict:
        with self.read() as s:
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
