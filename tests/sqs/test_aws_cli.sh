#!/usr/bin/env bash
# The SQS-compatible API of a real mqd, driven with the aws CLI, and messages crossing
# between the SQS API and mqctl both ways.
#
# Run by tests/it/sqs.rs, which starts the node and sets: AWS (the aws CLI), PY (a Python
# for reading JSON), MQCTL, MQ_DATA_DIR (mqctl finds the node there), ENDPOINT,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION.
set -euo pipefail

sqs() { "$AWS" --endpoint-url "$ENDPOINT" --output json sqs "$@"; }
# jget EXPR: evaluates a Python expression over the JSON on stdin, bound to `d`.
jget() { "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
md5() { printf '%s' "$1" | md5sum | cut -d' ' -f1; }
fail() { echo "FAILED: $*" >&2; exit 1; }
expect() { [ "$1" = "$2" ] || fail "$3: expected [$2], got [$1]"; }
step() { echo "--- $*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "create, list, inspect"
url=$(sqs create-queue --queue-name cli-jobs --attributes VisibilityTimeout=20 | jget 'd["QueueUrl"]')
expect "${url##*/}" cli-jobs "queue URL"
expect "$(sqs list-queues --queue-name-prefix cli- | jget 'd["QueueUrls"]')" "['$url']" "list-queues"
expect "$(sqs get-queue-url --queue-name cli-jobs | jget 'd["QueueUrl"]')" "$url" "get-queue-url"
attrs=$(sqs get-queue-attributes --queue-url "$url" --attribute-names All)
expect "$(echo "$attrs" | jget 'd["Attributes"]["VisibilityTimeout"]')" 20 "VisibilityTimeout"
sqs set-queue-attributes --queue-url "$url" --attributes DelaySeconds=0,MaximumMessageSize=65536
expect "$(sqs get-queue-attributes --queue-url "$url" --attribute-names MaximumMessageSize | jget 'd["Attributes"]["MaximumMessageSize"]')" 65536 "MaximumMessageSize"

step "tags"
sqs tag-queue --queue-url "$url" --tags team=billing,env=prod
sqs untag-queue --queue-url "$url" --tag-keys env
expect "$(sqs list-queue-tags --queue-url "$url" | jget 'd["Tags"]')" "{'team': 'billing'}" "tags through aws"
expect "$("$MQCTL" queue describe cli-jobs --output json | jget 'd["tags"]')" "{'team': 'billing'}" "tags through mqctl"

step "aws sends, mqctl receives"
r=$(sqs send-message --queue-url "$url" --message-body 'from the aws cli' \
    --message-attributes '{"origin":{"DataType":"String","StringValue":"aws"},"n":{"DataType":"Number","StringValue":"3"}}')
expect "$(echo "$r" | jget 'd["MD5OfMessageBody"]')" "$(md5 'from the aws cli')" "MD5OfMessageBody"
got=$("$MQCTL" receive cli-jobs --wait 5s --output json)
expect "$(echo "$got" | jget 'd["body"]')" 'from the aws cli' "body through mqctl"
expect "$(echo "$got" | jget 'd["attributes"]["origin"]')" aws "attribute through mqctl"
"$MQCTL" ack cli-jobs "$(echo "$got" | jget 'd["receipt"]')" >/dev/null

step "mqctl sends, aws receives"
"$MQCTL" send cli-jobs 'from mqctl' --attr origin=mqctl >/dev/null
m=$(sqs receive-message --queue-url "$url" --wait-time-seconds 5 \
    --message-attribute-names All --attribute-names All | jget 'json.dumps(d["Messages"][0])')
expect "$(echo "$m" | jget 'd["Body"]')" 'from mqctl' "body through aws"
expect "$(echo "$m" | jget 'd["MD5OfBody"]')" "$(md5 'from mqctl')" "MD5OfBody"
expect "$(echo "$m" | jget 'json.dumps(d["MessageAttributes"], sort_keys=True)')" '{"origin": {"DataType": "String", "StringValue": "mqctl"}}' "attributes through aws"
expect "$(echo "$m" | jget 'd["Attributes"]["ApproximateReceiveCount"]')" 1 "ApproximateReceiveCount"
sqs delete-message --queue-url "$url" --receipt-handle "$(echo "$m" | jget 'd["ReceiptHandle"]')"
expect "$("$MQCTL" queue describe cli-jobs --output json | jget 'd["visible"] + d["in_flight"]')" 0 "queue empty after delete"

step "batch send, visibility change, batch delete"
cat > "$tmp/entries.json" <<'EOF'
[{"Id": "one", "MessageBody": "first"}, {"Id": "two", "MessageBody": "second"}]
EOF
r=$(sqs send-message-batch --queue-url "$url" --entries "file://$tmp/entries.json")
expect "$(echo "$r" | jget 'sorted(e["Id"] for e in d["Successful"])')" "['one', 'two']" "batch send"
got=$(sqs receive-message --queue-url "$url" --wait-time-seconds 2)
first=$(echo "$got" | jget 'd["Messages"][0]["ReceiptHandle"]')
first_id=$(echo "$got" | jget 'd["Messages"][0]["MessageId"]')
sqs change-message-visibility --queue-url "$url" --receipt-handle "$first" --visibility-timeout 0
# Both messages are visible now: the one never received, and the first one again.
again=$(sqs receive-message --queue-url "$url" --max-number-of-messages 10 --wait-time-seconds 2 --attribute-names ApproximateReceiveCount)
expect "$(echo "$again" | jget 'sorted((m["MessageId"] == "'"$first_id"'", m["Attributes"]["ApproximateReceiveCount"]) for m in d["Messages"])')" \
    "[(False, '1'), (True, '2')]" "received again after visibility 0"
echo "$again" | jget 'json.dumps([{"Id": "e%d" % i, "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(d["Messages"])])' > "$tmp/del.json"
expect "$(sqs delete-message-batch --queue-url "$url" --entries "file://$tmp/del.json" | jget 'len(d["Successful"])')" 2 "batch delete"

step "purge"
sqs purge-queue --queue-url "$url"
expect "$(sqs get-queue-attributes --queue-url "$url" --attribute-names ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible | jget 'int(d["Attributes"]["ApproximateNumberOfMessages"]) + int(d["Attributes"]["ApproximateNumberOfMessagesNotVisible"])')" 0 "purged"

step "FIFO order per group"
furl=$(sqs create-queue --queue-name cli-orders.fifo --attributes FifoQueue=true,ContentBasedDeduplication=true | jget 'd["QueueUrl"]')
for i in 1 2 3; do
    r=$(sqs send-message --queue-url "$furl" --message-body "order-$i" --message-group-id customer-7)
    [ -n "$(echo "$r" | jget 'd["SequenceNumber"]')" ] || fail "FIFO send without SequenceNumber"
done
# A duplicate body within the window is acknowledged, not stored.
sqs send-message --queue-url "$furl" --message-body order-1 --message-group-id customer-7 >/dev/null
bodies=""
for _ in 1 2 3 4 5 6; do
    m=$(sqs receive-message --queue-url "$furl" --wait-time-seconds 1)
    [ -n "$m" ] || continue
    bodies="$bodies $(echo "$m" | jget 'd["Messages"][0]["Body"]')"
    sqs delete-message --queue-url "$furl" --receipt-handle "$(echo "$m" | jget 'd["Messages"][0]["ReceiptHandle"]')"
done
expect "$bodies" " order-1 order-2 order-3" "FIFO order, duplicate dropped"

step "dead-letter queue"
dlq=$(sqs create-queue --queue-name cli-dlq | jget 'd["QueueUrl"]')
arn=$(sqs get-queue-attributes --queue-url "$dlq" --attribute-names QueueArn | jget 'd["Attributes"]["QueueArn"]')
"$PY" -c 'import json, sys; print(json.dumps({"RedrivePolicy": json.dumps({"deadLetterTargetArn": sys.argv[1], "maxReceiveCount": 1})}))' "$arn" > "$tmp/redrive.json"
src=$(sqs create-queue --queue-name cli-src --attributes "file://$tmp/redrive.json" | jget 'd["QueueUrl"]')
expect "$(sqs list-dead-letter-source-queues --queue-url "$dlq" | jget 'd["queueUrls"]')" "['$src']" "dead-letter sources"
sqs send-message --queue-url "$src" --message-body poison >/dev/null
sqs receive-message --queue-url "$src" --visibility-timeout 0 --wait-time-seconds 2 >/dev/null
expect "$(sqs receive-message --queue-url "$src" --wait-time-seconds 1)" "" "moved after one receive"
expect "$("$MQCTL" receive cli-dlq --wait 5s --output json | jget 'd["body"]')" poison "in the dead-letter queue, through mqctl"

step "errors"
set +e
out=$(sqs get-queue-url --queue-name no-such-queue 2>&1)
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "get-queue-url of a missing queue succeeded"
case "$out" in *NonExistentQueue*|*QueueDoesNotExist*) ;; *) fail "missing queue error: $out" ;; esac
set +e
out=$(AWS_SECRET_ACCESS_KEY=wrong sqs list-queues 2>&1)
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "a wrong secret was accepted"
case "$out" in *SignatureDoesNotMatch*) ;; *) fail "wrong secret error: $out" ;; esac

step "delete"
# A dead-letter queue goes after its source: mqd refuses to delete one still named by a
# RedrivePolicy (SQS would delete it and leave the policy dangling).
for q in "$url" "$furl" "$src" "$dlq"; do sqs delete-queue --queue-url "$q"; done
# An answer without queues prints nothing.
expect "$(sqs list-queues --queue-name-prefix cli-)" "" "all deleted"
echo "aws CLI flows: all passed"
