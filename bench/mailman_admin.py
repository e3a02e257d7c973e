"""Create a Mailman 3 list with members, run by the *Mailman* virtualenv's Python.

``bench.mailman_peer`` runs this script as ``.venv-mailman/bin/python bench/mailman_admin.py
--config mailman.cfg --list fanout@bench.test --members FILE [--personalize]``.  It
imports only Mailman (never ``mailflow``): Mailman pins its own SQLAlchemy and friends,
so it lives in its own virtualenv.

The list is made with Mailman's own API (``create_list`` with the default style), then
set for the benchmark: non-members' posts are accepted (the load generator's sender is
not a member), no DMARC mitigation, no archiving, no digests, no welcome or
administrator notices, and ``personalize`` = ``individual`` only with ``--personalize``
(one SMTP transaction per recipient, scenario F).  Members (one address per line in
FILE) get the rows ``IMailingList.subscribe`` would make (see :func:`subscribe_all`),
committed every 5,000.  Prints one JSON object: the list id, the number of members and
the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def configure_list(mlist: object, personalize: bool) -> None:
    from mailman.interfaces.action import Action
    from mailman.interfaces.archiver import ArchivePolicy
    from mailman.interfaces.mailinglist import DMARCMitigateAction, Personalization

    mlist.default_nonmember_action = Action.accept  # type: ignore[attr-defined]
    mlist.default_member_action = Action.accept  # type: ignore[attr-defined]
    mlist.dmarc_mitigate_action = DMARCMitigateAction.no_mitigation  # type: ignore[attr-defined]
    mlist.archive_policy = ArchivePolicy.never  # type: ignore[attr-defined]
    mlist.digests_enabled = False  # type: ignore[attr-defined]
    mlist.send_welcome_message = False  # type: ignore[attr-defined]
    mlist.send_goodbye_message = False  # type: ignore[attr-defined]
    mlist.admin_immed_notify = False  # type: ignore[attr-defined]
    mlist.admin_notify_mchanges = False  # type: ignore[attr-defined]
    mlist.personalize = (Personalization.individual if personalize  # type: ignore[attr-defined]
                         else Personalization.none)


def subscribe_all(mlist: object, members: list[str], batch: int = 5000) -> int:
    """Subscribe ``members`` (new addresses): the objects ``subscribe`` would make.

    ``IUserManager.create_address`` and ``IMailingList.subscribe`` take ~4 ms per
    member (they query for an existing address, membership and ban first), so 100,000
    members would take minutes; the roster here is fresh and known to be unique, so
    the same rows (an ``Address`` and a ``Member``, each with its ``Preferences``) are
    added directly, without autoflush, and committed in batches.
    """
    from mailman.config import config
    from mailman.interfaces.member import MemberRole
    from mailman.model.address import Address
    from mailman.model.member import Member
    from mailman.model.preferences import Preferences

    store = config.db.store
    list_id = mlist.list_id  # type: ignore[attr-defined]
    with store.no_autoflush:
        for number, email in enumerate(members, 1):
            address = Address(email, "")
            address.preferences = Preferences()
            member = Member(MemberRole.member, list_id, address)
            member.preferences = Preferences()
            store.add(member)
            if number % batch == 0:
                config.db.commit()
    config.db.commit()
    return len(members)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--list", dest="address", required=True)
    parser.add_argument("--members", required=True, help="file: one address per line")
    parser.add_argument("--personalize", action="store_true")
    args = parser.parse_args(argv)

    from mailman.app.lifecycle import create_list
    from mailman.config import config
    from mailman.core.initialize import initialize
    from mailman.interfaces.domain import IDomainManager
    from zope.component import getUtility

    initialize(args.config)
    began = time.monotonic()
    domain = args.address.split("@", 1)[1]
    domains = getUtility(IDomainManager)
    if domains.get(domain) is None:
        domains.add(domain)
    mlist = create_list(args.address)
    configure_list(mlist, args.personalize)
    config.db.commit()
    with open(args.members) as handle:
        members = [line.strip() for line in handle if line.strip()]
    count = subscribe_all(mlist, members)
    json.dump({"list_id": mlist.list_id, "members": count,
               "seconds": round(time.monotonic() - began, 2)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
