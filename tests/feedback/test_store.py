"""Storage and assignment rules, on SQLite and on PostgreSQL."""

from datetime import timedelta

import pytest
from sqlalchemy import text

from rlhfkit.errors import UserError
from rlhfkit.feedback.schema import Annotator, Label
from rlhfkit.feedback.store import AlreadyLabelled, NotAssigned, Store, Who

from .helpers import add_items

HOUR = timedelta(hours=1)


def people(store, *names):
    out = []
    for n in names:
        store.add_annotator(n)
    with store.session() as s:
        for n in names:
            a = s.query(Annotator).filter_by(name=n).one()
            out.append(Who(a.id, a.name, a.role))
    return out


def rank_in_order(store, who, item):
    """Rank the item's completions best-first in the order they were shown."""
    store.submit(who, item["id"], "rank", [[c["id"]] for c in item["completions"]])


def test_import_is_idempotent_and_keeps_prompts(store):
    chat = [{"role": "user", "content": "hi"}]
    rows = [("a", ["x", "y"], {"model": "m"}), (chat, ["u", "v", "w"], {})]
    assert store.import_items(rows) == (2, 0)
    assert store.import_items(rows) == (0, 2)
    (alice,) = people(store, "alice")
    prompts = []
    while (item := store.next_item(alice, 1, HOUR)) is not None:
        prompts.append(item["prompt"])
        store.submit(alice, item["id"], "skip", None)
    assert sorted(map(str, prompts)) == sorted(map(str, ["a", chat]))


def test_tokens_are_hashed_and_checked(store):
    token = store.add_annotator("alice")
    assert store.authenticate(token).name == "alice"
    assert store.authenticate(token + "x") is None
    with store.session() as s:
        stored = [r[0] for r in s.execute(text("select token_hash from annotators"))]
    assert token not in stored
    with pytest.raises(UserError, match="already exists"):
        store.add_annotator("alice")
    new = store.add_annotator("alice", new_token=True)
    assert store.authenticate(token) is None and store.authenticate(new).name == "alice"


def test_each_item_gets_exactly_k_annotators(store):
    add_items(store, 5)
    annotators = people(store, "a", "b", "c")
    for who in annotators:  # each takes what is left for them
        while (item := store.next_item(who, 2, HOUR)) is not None:
            rank_in_order(store, who, item)
    with store.session() as s:
        per_item = dict(s.execute(text("select item_id, count(*) from labels group by item_id")).all())
    assert per_item == {i: 2 for i in range(1, 6)}  # 5 items x 2 annotators, none with 3


def test_resume_returns_the_held_item_and_random_order_is_stable(store):
    add_items(store, 3, k=4)
    (alice,) = people(store, "alice")
    first = store.next_item(alice, 1, HOUR)
    again = store.next_item(alice, 1, HOUR)
    assert again == first  # same item, same order: a reload or restart resumes
    reopened = Store(store.url)
    try:
        assert reopened.next_item(alice, 1, HOUR) == first
    finally:
        reopened.close()


def test_cannot_label_twice_or_unassigned(store):
    add_items(store, 2)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    with pytest.raises(NotAssigned):
        rank_in_order(store, bob, item)  # bob never got this item
    rank_in_order(store, alice, item)
    with pytest.raises(AlreadyLabelled):
        store.submit(alice, item["id"], "skip", None)
    assert store.progress(alice, 1, HOUR) == {"done": 1, "total": 2}


def test_bad_rankings_are_refused(store):
    add_items(store, 1, k=3)
    (alice,) = people(store, "alice")
    item = store.next_item(alice, 1, HOUR)
    ids = [c["id"] for c in item["completions"]]
    for bad in ([[ids[0]], [ids[1]]], [[ids[0]], [ids[0]], [ids[1]], [ids[2]]], [[ids[0], 999], ids[1:]], [], [[]]):
        with pytest.raises(ValueError):
            store.submit(alice, item["id"], "rank", bad)
    store.submit(alice, item["id"], "rank", [[ids[2]], [ids[0], ids[1]]])  # a tie in second place
    with store.session() as s:
        lab = s.query(Label).one()
        position = dict(s.execute(text("select id, position from completions")).all())
    expected = [0, 0, 0]  # ranks are stored per imported position, whatever the display order
    expected[position[ids[2]]], expected[position[ids[0]]], expected[position[ids[1]]] = 1, 2, 2
    assert lab.ranks == expected and lab.kind == "rank"


def test_skip_frees_the_slot_and_all_bad_is_a_full_tie(store):
    add_items(store, 1, k=3)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    assert store.next_item(bob, 1, HOUR) is None  # the only slot is alice's
    store.submit(alice, item["id"], "skip", None)
    assert store.next_item(alice, 1, HOUR) is None  # a skipped item never comes back
    got = store.next_item(bob, 1, HOUR)
    assert got["id"] == item["id"]
    store.submit(bob, got["id"], "all_bad", None)
    kinds = {lab["annotator"]: (lab["kind"], lab["ranks"]) for lab in store.all_labels()}
    assert kinds == {"alice": ("skip", None), "bob": ("all_bad", [1, 1, 1])}


def test_idle_assignment_goes_to_someone_else_after_the_lease(store):
    add_items(store, 1)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    assert store.next_item(bob, 1, HOUR) is None
    with store.session.begin() as s:  # alice walked away two hours ago
        s.execute(text("update assignments set assigned_at = assigned_at - interval '2 hours'")
                  if store.engine.dialect.name == "postgresql"
                  else text("update assignments set assigned_at = datetime(assigned_at, '-2 hours')"))
    assert store.next_item(bob, 1, HOUR)["id"] == item["id"]
    with pytest.raises(NotAssigned):
        rank_in_order(store, alice, item)
    rank_in_order(store, bob, store.next_item(bob, 1, HOUR))


def test_sqlite_uses_wal(sqlite_url):
    s = Store(sqlite_url)
    try:
        with s.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        s.close()


def test_unreachable_database_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a database URL"):
        Store("not a url")
    with pytest.raises(UserError, match="cannot open database"):
        Store(f"sqlite:///{tmp_path}/missing/dir/x.db")


def test_promotion_to_admin_sets_the_role_and_frees_held_items(store):
    add_items(store, 1)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    assert store.next_item(bob, 1, HOUR) is None  # alice holds the only slot
    token = store.add_annotator("alice", role="admin", new_token=True)
    assert store.authenticate(token).role == "admin"
    assert store.next_item(bob, 1, HOUR)["id"] == item["id"]  # an admin labels nothing: the slot is free


def age_assignments(store, minutes):
    """Move every assignment's start `minutes` into the past, as if that much time had gone by."""
    with store.session.begin() as s:
        s.execute(text(f"update assignments set assigned_at = assigned_at - interval '{minutes} minutes'")
                  if store.engine.dialect.name == "postgresql"
                  else text(f"update assignments set assigned_at = datetime(assigned_at, '-{minutes} minutes')"))


def test_reopening_an_item_renews_its_lease(store):
    add_items(store, 1)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    age_assignments(store, 50)  # alice has had it open for 50 of her 60 minutes...
    assert store.next_item(alice, 1, HOUR) == item  # ...and reloads the page: the lease starts again
    age_assignments(store, 20)  # 70 minutes since she first got it, 20 since she reopened it
    assert store.next_item(bob, 1, HOUR) is None  # still hers
    rank_in_order(store, alice, item)
    assert [lab["annotator"] for lab in store.all_labels()] == ["alice"]


def test_reopening_an_item_after_its_lease_keeps_it_if_nobody_took_it(store):
    add_items(store, 2)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    age_assignments(store, 120)
    assert store.next_item(alice, 1, HOUR) == item  # back after two hours: nobody took it, still hers
    assert store.next_item(bob, 1, HOUR)["id"] != item["id"]  # and renewed: bob gets the other one


@pytest.mark.timeout(60)
def test_a_takeover_racing_a_submit_is_a_clean_outcome(store):
    """Bob takes over alice's idle slot while her submit is between reading and writing it.

    Before the row lock, PostgreSQL let bob delete the assignment under alice's transaction, whose
    UPDATE then found no row: StaleDataError, a 500. Now bob waits for her (or she finds it gone)."""
    import threading

    from sqlalchemy import event

    add_items(store, 1)
    alice, bob = people(store, "alice", "bob")
    item = store.next_item(alice, 1, HOUR)
    age_assignments(store, 120)  # alice's lease has run out; bob may take the slot
    fired, bob_got = threading.Event(), {}
    me = threading.get_ident()

    def rival(*_):
        bob_got["item"] = store.next_item(bob, 1, HOUR)

    def after_execute(conn, cursor, statement, params, context, executemany):
        if (threading.get_ident() == me and not fired.is_set() and statement.lstrip().upper().startswith("SELECT")
                and "FROM assignments" in statement and "annotator_id" in statement):
            fired.set()  # alice has just read her assignment: now bob claims the item
            t = threading.Thread(target=rival)
            t.start()
            t.join(1.5)  # with a row lock bob waits for alice; give up waiting and let her go on
            bob_got["thread"] = t

    event.listen(store.engine, "after_cursor_execute", after_execute)
    try:
        try:
            rank_in_order(store, alice, item)
            outcome = "stored"
        except NotAssigned:
            outcome = "not assigned"
    finally:
        event.remove(store.engine, "after_cursor_execute", after_execute)
        if "thread" in bob_got:
            bob_got["thread"].join(30)
    assert fired.is_set()
    labels = [lab["annotator"] for lab in store.all_labels()]
    if outcome == "stored":
        assert labels == ["alice"] and bob_got["item"] is None
    else:
        assert labels == [] and bob_got["item"]["id"] == item["id"]
    with store.session() as s:
        assert s.execute(text("select count(*) from assignments")).scalar() == 1


@pytest.mark.timeout(60)
def test_a_claim_waits_for_a_locked_last_item_instead_of_giving_up(pg_url):
    """PostgreSQL: claims skip items a rival claim has locked, but when that goes on past a couple of
    rounds (the last item, a slow rival) the claim waits for the lock rather than spin and fail.
    (SQLite has no row locks: its writers are serialized.)"""
    import threading
    import time

    store = Store(pg_url)
    try:
        add_items(store, 1)
        (alice,) = people(store, "alice")
        locked, release = threading.Event(), threading.Event()

        def rival():  # a claim in progress on the only item, slow to finish
            with store.engine.connect() as c:
                c.execute(text("select id from items where id = 1 for no key update"))
                locked.set()
                release.wait(10)
                c.rollback()

        t = threading.Thread(target=rival)
        t.start()
        locked.wait(10)
        threading.Timer(1.0, release.set).start()
        t0 = time.monotonic()
        item = store.next_item(alice, 1, HOUR)
        assert item is not None and item["id"] == 1 and time.monotonic() - t0 >= 0.9
        t.join(10)
    finally:
        store.close()
