"""A list's decoration of one copy: subject prefix, Reply-To, header and footer text.

The list's :class:`~mailflow.model.Decoration` says what; the work is in
``subject_prefix``, ``templates`` and ``body_decoration``.  A list without decoration
returns at the first test: this step runs for every copy, and parsing MIME is the
expensive part of rendering one.  Aliases are never decorated (they pass personal mail
on), nor the relay's own messages (auto-replies, notices).
"""

from __future__ import annotations

from mailflow.model import GENERATED, ListKind, ReplyTo
from mailflow.pipeline.context import CopyContext
from mailflow.pipeline.send.list_links import links
from mailflow.pipeline.send.subject_prefix import prefixed


def decorate(copy: CopyContext) -> None:
    mailing_list = copy.mailing_list
    decoration = mailing_list.decoration
    if (not decoration.changes_copies or mailing_list.kind is not ListKind.LIST
            or copy.message.protocol == GENERATED):
        return
    if decoration.subject_prefix:
        copy.header = prefixed(copy.header, decoration.subject_prefix)
    if decoration.reply_to != ReplyTo.NONE.value:
        target = (mailing_list.address if decoration.reply_to == ReplyTo.LIST.value
                  else decoration.reply_to)
        copy.removed.append("Reply-To")
        copy.added.append(f"Reply-To: {target}")
    if decoration.header_template or decoration.footer_template:
        _decorate_body(copy)


def _decorate_body(copy: CopyContext) -> None:
    # Jinja2 and the MIME work: loaded by the first list with a header or footer.
    from mailflow.pipeline.send import body_decoration, templates

    mailing_list, member = copy.mailing_list, copy.member
    found = links(mailing_list, copy.identity, None if member is None else member.address)
    values = templates.variables(
        name=mailing_list.name, address=mailing_list.address, list_id=mailing_list.list_id,
        page_url=found.page_url, member_address="" if member is None else member.address,
        member_name="" if member is None else member.name,
        unsubscribe_url=found.unsubscribe_url)
    decoration = mailing_list.decoration
    texts = body_decoration.Texts(templates.render(decoration.header_template, values),
                                  templates.render(decoration.footer_template, values))
    if not (texts.header.strip() or texts.footer.strip()):
        return
    result = body_decoration.decorate(copy.header, bytes(copy.body), texts)
    copy.body = result.rest
    copy.removed.extend(result.removed_fields)
    copy.added.extend(result.new_fields)
