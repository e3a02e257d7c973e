#!/bin/sh
# mailflow-curl.sh: a Postfix pipe transport that needs only curl.
#
#   mailflow-curl.sh URL SENDER RECIPIENT [RECIPIENT...] < message
#
# Posts the message on standard input to a MailFlow Relay's POST /v1/email and tells
# Postfix what happened with a sysexits status: 0 accepted; 67 unknown recipient and
# 65 any other refusal (Postfix bounces); 75 anything else (Postfix keeps the message
# and retries), including a wrong key, a relay that is down and a timeout.
#
# The pre-shared key comes from $MAILFLOW_INGRESS_PSK or from the file named by
# $MAILFLOW_INGRESS_PSK_FILE. pipe(8) passes the command only export_environment, so
# call it through a small wrapper that sets MAILFLOW_INGRESS_PSK_FILE, e.g. in master.cf
# (with mailflow_destination_recipient_limit = 1; see docs/postfix.md):
#   mailflow unix - n n - - pipe
#     flags=q user=mailflow null_sender= argv=/usr/local/bin/mailflow-curl-wrapper
#     http://127.0.0.1:8025 ${sender} ${recipient}
set -u

EX_DATAERR=65
EX_NOUSER=67
EX_TEMPFAIL=75

if [ $# -lt 3 ]; then
    echo "4.3.5 usage: mailflow-curl.sh URL SENDER RECIPIENT..." >&2
    exit $EX_TEMPFAIL
fi
url=${1%/}
sender=$2
shift 2

key=${MAILFLOW_INGRESS_PSK:-}
if [ -z "$key" ] && [ -n "${MAILFLOW_INGRESS_PSK_FILE:-}" ]; then
    key=$(cat "$MAILFLOW_INGRESS_PSK_FILE" 2>/dev/null) || key=""
fi
key=$(printf '%s' "$key" | tr -d ' \t\r\n')  # as mailflow pipe: no surrounding blanks
if [ -z "$key" ]; then
    echo "4.3.5 no pre-shared key: set MAILFLOW_INGRESS_PSK or MAILFLOW_INGRESS_PSK_FILE" >&2
    exit $EX_TEMPFAIL
fi
key=${key%%,*}  # a rotation list: the first key is the current one

body=$(mktemp) && errors=$(mktemp) || {
    echo "4.3.0 cannot create a temporary file" >&2
    exit $EX_TEMPFAIL
}
trap 'rm -f "$body" "$errors"' EXIT

# The envelope goes in the query string, URL-encoded by curl (--url-query, curl >= 7.87).
count=$#
for rcpt in "$@"; do
    set -- "$@" --url-query "to=$rcpt"
done
shift "$count"
set -- --url-query "from=$sender" "$@"

status=$(curl --silent --show-error --max-time "${MAILFLOW_CURL_TIMEOUT:-100}" \
    --header "Authorization: Bearer $key" --header "Content-Type: message/rfc822" \
    --data-binary @- --output "$body" --write-out '%{http_code}' \
    "$@" "$url/v1/email" 2>"$errors") || {
    code=$?
    # Our status line first: Postfix takes the DSN code from the start of the output.
    echo "4.4.1 relay at $url unreachable (curl exit $code: $(head -n 1 "$errors"))" >&2
    exit $EX_TEMPFAIL
}

case "$status" in
    2??) exit 0 ;;
esac
detail=$(sed -n 's/.*"detail": *"\([^"]*\)".*/\1/p' "$body")
enhanced=$(sed -n 's/.*"enhanced_status": *"\([^"]*\)".*/\1/p' "$body")
case "$status" in
    422)
        echo "${enhanced:-5.0.0} ${detail:-refused}" >&2
        case "$enhanced" in
            5.1.1|5.7.1) exit $EX_NOUSER ;;
        esac
        exit $EX_DATAERR ;;
    400|413)
        echo "${enhanced:-5.6.0} ${detail:-bad message}" >&2
        exit $EX_DATAERR ;;
    *)
        echo "4.3.0 relay answered HTTP $status: ${detail:-no detail}" >&2
        exit $EX_TEMPFAIL ;;
esac
