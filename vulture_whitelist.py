"""Names vulture cannot see used: called by a framework, not by our code.

`make lint` runs vulture over the package, the tests and the benchmarks with this file;
anything in `mailflow/` it reports is dead code to remove, not to add here.  Each entry
below says who calls it.
"""

from vulture.whitelist_utils import Whitelist

from mailflow import cli, config, model
from mailflow.child import channel
from mailflow.egress import smtp_client
from mailflow.ingress import limits, smtp, tls
from mailflow.services import gauges
from mailflow.store import engine
from mailflow.testing import sink
from mailflow.web import app as web_app
from mailflow.web import problems
from mailflow.web.api import (
    audit,
    bounces,
    dkim,
    docs,
    domains,
    held,
    lists,
    members,
    operations,
    pages,
    queue,
    requests,
    rules,
    tokens,
    users,
)
from mailflow.web.ui import audit as ui_audit
from mailflow.web.ui import auth as ui_auth
from mailflow.web.ui import dashboard as ui_dashboard
from mailflow.web.ui import dkim as ui_dkim
from mailflow.web.ui import domains as ui_domains
from mailflow.web.ui import lists as ui_lists
from mailflow.web.ui import members as ui_members
from mailflow.web.ui import moderation as ui_moderation
from mailflow.web.ui import queue as ui_queue
from mailflow.web.ui import rules as ui_rules
from mailflow.web.ui import suppressions as ui_suppressions
from mailflow.web.ui import tokens as ui_tokens
from mailflow.web.ui import trace as ui_trace
from mailflow.web.ui import users as ui_users

# click registers the commands through their decorators.
cli.F
cli.domain_add, cli.domain_list, cli.domain_remove
cli.list_create, cli.list_update, cli.list_show, cli.list_ls, cli.list_delete
cli.member_add, cli.member_remove, cli.member_list, cli.member_import
cli.queue_show, cli.gc
Whitelist().rule_add, Whitelist().rule_remove, Whitelist().rule_ls  # in cli._rule_group
cli.autoreply_set, cli.autoreply_clear, cli.autoreply_show
cli.filter_add, cli.filter_ls, cli.filter_remove, cli.held_ls, cli.held_release, cli.held_discard
cli.member_set_role, cli.held_approve, cli.held_reject
cli.member_enable, cli.bounces_ls, cli.suppress_add, cli.suppress_remove, cli.suppress_ls
cli.dkim_keygen, cli.dkim_ls, cli.dkim_remove
cli.requests_ls, cli.requests_approve, cli.requests_reject

# pydantic calls the validators and the sources hook; the hook's signature is pydantic's.
config.Settings._check_listen, config.Settings._check_relay, config.Settings._check_egress
config.Settings._parse_routes, config.Settings._parse_proxies, config.Settings._parse_old_secrets,
config.Settings._check_database_url
config.Settings._upper_log_level, config.Settings._check_retry
config.Settings._empty_path_is_none, config.Settings._check_tls, config.Settings._check_role
config.Settings._check_role_address, config.Settings._check_dns_resolver
config.Settings._check_blob_url, config.Settings._check_public_url
config.Settings._parse_topics, config.Settings._parse_queues
config.Settings._check_cert_pattern
config.Settings.settings_customise_sources

# asyncio calls the protocol methods.
channel.Channel.connection_made, channel.Channel.connection_lost
smtp_client.SmtpClient.connection_made, smtp_client.SmtpClient.connection_lost
smtp_client._ReplyReader.pause_writing

# aiosmtpd calls the handler hooks; FastAPI the routes; uvicorn reads should_exit and
# calls capture_signals; SQLAlchemy the event listeners; signal handlers get (signum, frame).
smtp.RelayHandler.handle_RCPT, smtp.RelayHandler.handle_DATA
smtp.RelayHandler.handle_HELO, smtp.RelayHandler.handle_EHLO, smtp.RelayHandler.handle_MAIL
smtp.RelayHandler.handle_exception
# aiosmtpd's SMTP class calls its timer method, which the session limits override.
limits.LimitedSession._reset_timeout
sink.SinkHandler.handle_EHLO, sink.SinkHandler.handle_MAIL
tls.StartTlsSession.smtp_AUTH  # aiosmtpd's command table (every smtp_ method)
sink.SinkHandler.handle_RCPT, sink.SinkHandler.handle_DATA
sink._CountingController._create_server
sink.Received.at
nested = Whitelist()
nested.receive_email  # http.create_router's route
nested.receive_sns  # sns.create_sns_router's route
# http.server calls the handler's methods (the test certificate server of testing.aws).
nested.do_GET, nested.log_message
nested.healthz, nested.readyz  # web.app.create_app's routes
nested.confirm  # web.unsubscribe.create_router's routes
nested.show, nested.subscribe, nested.confirm_page  # web.subscribe.create_router's
nested.style  # web.public_pages.style_router's route
web_app.EmbeddedServer.capture_signals
nested.should_exit  # uvicorn's Server reads it; Relay.stop sets it
engine._on_connect, engine._on_begin
nested.isolation_level  # sqlite3 reads it (engine._on_connect sets it)
nested.nameservers  # dnspython's Resolver reads it (testing.dns sets it)

# http.server's hooks in the test proxy (mailflow/testing/fault_proxy.py).
nested.daemon_threads, nested.log_message
nested.do_GET, nested.do_POST, nested.do_PUT, nested.do_DELETE

# prometheus_client calls a registered collector's collect() at each scrape.
gauges.QueueGauges.collect

# The REST API (issue 14): FastAPI calls the routes and exception handlers through their
# decorators, pydantic fills and serialises the fields, FastAPI calls app.openapi.
cli.user_add, cli.user_ls, cli.user_remove, cli.user_role
cli.token_create, cli.token_ls, cli.token_revoke
model.ListRole.MODERATOR, model.TokenScope.READ  # values a user gives
audit.list_audit, docs.install_docs, domains.list_domains, held.list_held, lists.list_lists
members.list_members, members.remove_member, members.export_members, queue.queue_counts
rules.list_sender_rules, rules.list_filters, rules.add_filter, rules.remove_filter
tokens.list_tokens, users.list_users, users.set_role, users.clear_role
lists.ListOut.member_count, lists.ListDeleted.failed_deliveries, pages.Page.next_cursor
bounces.list_bounces, bounces.list_suppressions, bounces.Suppressed.suppression
dkim.list_dkim_keys, dkim.DkimKeyOut.dns_txt, operations.queue_action
held.Decision.added_to, held.Decision.notified
requests.list_requests
Whitelist().docs_page, Whitelist().docs_init  # in docs.install_docs
web_app.create_app  # its app.openapi
Whitelist().openapi
problems.install_problem_handlers  # its handlers:
Whitelist().domain_error, Whitelist().http_error, Whitelist().invalid_request
Whitelist().internal_error

# The web UI (issue 14): FastAPI calls its routes and exception handlers.
ui_auth.login_form, ui_auth.logout, ui_dashboard.dashboard
ui_domains.domains_page, ui_domains.add_domain, ui_domains.remove_domain
ui_lists.lists_page, ui_lists.create_list, ui_lists.list_settings, ui_lists.update_settings
ui_lists.delete_list, ui_members.members_page, ui_members.add_member, ui_members.remove_member
ui_members.set_role, ui_members.export, ui_members.import_form, ui_members.preview
ui_members.import_members, ui_members.enable_member, ui_audit.audit_page
# Jinja2 reads the chart's fields and the settings' attributes in the templates.
ui_dashboard.Bar.x, ui_dashboard.Bar.delivered_y, ui_dashboard.Bar.delivered_h
ui_dashboard.Bar.failed_y
ui_dashboard.Bar.failed_h, ui_dashboard.Bar.label, ui_dashboard.Bar.hour
ui_dashboard.Chart.width, ui_dashboard.Chart.height, ui_dashboard.Chart.left
ui_dashboard.Chart.base, ui_dashboard.Chart.top_count, ui_dashboard.Chart.total_delivered
ui_dashboard.Chart.total_failed, ui_lists.Setting.label, ui_lists.Setting.help
ui_lists.Setting.choices
Whitelist().ui_root, Whitelist().login_required  # in ui.setup.install_ui
# The operations pages (ui-ops): routes FastAPI calls.
ui_moderation.moderation_page, ui_moderation.held_page, ui_moderation.held_frame
ui_moderation.approve_request, ui_moderation.reject_request
ui_queue.queue_page, ui_queue.queue_act, ui_rules.rules_index, ui_rules.rules_page
ui_rules.add_sender, ui_rules.remove_sender, ui_rules.add_wide_sender,
ui_rules.remove_wide_sender, ui_trace.trace_page
ui_suppressions.suppressions_page, ui_suppressions.add_suppression
ui_suppressions.remove_suppression
ui_dkim.dkim_page, ui_dkim.create_key, ui_dkim.remove_key
# The users and API tokens pages (usersui): routes FastAPI calls.
ui_users.users_page, ui_tokens.tokens_page
