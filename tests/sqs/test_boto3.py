"""The SQS-compatible API of a real mqd, driven with boto3.

Run by tests/it/sqs.rs, which starts the node and passes:
  MQD_SQS_ENDPOINT   http://127.0.0.1:PORT
  MQD_SQS_KEY / MQD_SQS_SECRET           a cluster admin's credentials
  MQD_SQS_LIMITED_KEY / MQD_SQS_LIMITED_SECRET
                     a user who may only send to queues named `limited-*`

boto3 no longer checks SQS's MD5 digests itself, so this suite computes them as SQS
documents them and compares (the Java and .NET SDKs check them the same way).
"""

import base64
import hashlib
import json
import os
import struct
import threading
import time
import unittest
import urllib.error
import urllib.request

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = os.environ["MQD_SQS_ENDPOINT"]
REGION = "eu-west-1"
PREFIX = "b3-"


def client(key=None, secret=None):
    return boto3.client(
        "sqs",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=key or os.environ["MQD_SQS_KEY"],
        aws_secret_access_key=secret or os.environ["MQD_SQS_SECRET"],
        config=botocore.config.Config(retries={"max_attempts": 2}),
    )


SQS = client()


def md5_of_body(body):
    return hashlib.md5(body.encode("utf-8")).hexdigest()


def md5_of_attributes(attrs):
    """SQS's algorithm: for each attribute in name order, the length-prefixed name, the
    length-prefixed data type, 1 (String, Number) or 2 (Binary), the length-prefixed
    value."""
    buf = b""

    def field(b):
        return struct.pack(">I", len(b)) + b

    for name in sorted(attrs):
        a = attrs[name]
        buf += field(name.encode()) + field(a["DataType"].encode())
        if a["DataType"].startswith("Binary"):
            buf += b"\x02" + field(a["BinaryValue"])
        else:
            buf += b"\x01" + field(a["StringValue"].encode())
    return hashlib.md5(buf).hexdigest()


def error_code(exc):
    return exc.response["Error"]["Code"]


def make_queue(name, **attributes):
    attrs = {k: str(v) for k, v in attributes.items()}
    return SQS.create_queue(QueueName=PREFIX + name, Attributes=attrs)["QueueUrl"]


def receive_all(url, n, **kw):
    """Receives until `n` messages arrived (or 10 empty long polls)."""
    got = []
    empty = 0
    while len(got) < n and empty < 10:
        r = SQS.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, **kw)
        msgs = r.get("Messages", [])
        empty += 0 if msgs else 1
        got.extend(msgs)
    return got


class Queues(unittest.TestCase):
    def test_create_is_idempotent_and_attributes_read_back(self):
        url = make_queue("attrs", VisibilityTimeout=7, DelaySeconds=0, MessageRetentionPeriod=3600)
        self.assertTrue(url.endswith("/" + PREFIX + "attrs"), url)
        # The same attributes again: the same URL.
        self.assertEqual(make_queue("attrs", VisibilityTimeout=7), url)
        with self.assertRaises(SQS.exceptions.QueueNameExists) as e:
            make_queue("attrs", VisibilityTimeout=8)
        self.assertIn("VisibilityTimeout", str(e.exception))
        self.assertEqual(SQS.get_queue_url(QueueName=PREFIX + "attrs")["QueueUrl"], url)

        a = SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        self.assertEqual(a["VisibilityTimeout"], "7")
        self.assertEqual(a["MessageRetentionPeriod"], "3600")
        self.assertEqual(a["ApproximateNumberOfMessages"], "0")
        self.assertEqual(a["QueueArn"], f"arn:aws:sqs:{REGION}:000000000000:{PREFIX}attrs")
        self.assertGreater(int(a["CreatedTimestamp"]), 1_700_000_000)
        self.assertNotIn("FifoQueue", a)

        SQS.set_queue_attributes(
            QueueUrl=url, Attributes={"VisibilityTimeout": "45", "ReceiveMessageWaitTimeSeconds": "2"}
        )
        a = SQS.get_queue_attributes(
            QueueUrl=url, AttributeNames=["VisibilityTimeout", "ReceiveMessageWaitTimeSeconds"]
        )["Attributes"]
        self.assertEqual(a, {"VisibilityTimeout": "45", "ReceiveMessageWaitTimeSeconds": "2"})

    def test_list_with_prefix_and_pages(self):
        urls = sorted(make_queue(f"list-{i}") for i in range(5))
        listed = SQS.list_queues(QueueNamePrefix=PREFIX + "list-")["QueueUrls"]
        self.assertEqual(sorted(listed), urls)
        pages, token = [], None
        while True:
            kw = {"NextToken": token} if token else {}
            r = SQS.list_queues(QueueNamePrefix=PREFIX + "list-", MaxResults=2, **kw)
            pages.append(r["QueueUrls"])
            token = r.get("NextToken")
            if not token:
                break
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        self.assertEqual(sorted(sum(pages, [])), urls)
        self.assertNotIn("QueueUrls", SQS.list_queues(QueueNamePrefix="no-such-prefix-"))

    def test_delete_queue(self):
        url = make_queue("doomed")
        SQS.send_message(QueueUrl=url, MessageBody="left behind")
        SQS.delete_queue(QueueUrl=url)
        with self.assertRaises(SQS.exceptions.QueueDoesNotExist):
            SQS.get_queue_url(QueueName=PREFIX + "doomed")

    def test_tags(self):
        url = SQS.create_queue(QueueName=PREFIX + "tagged", tags={"team": "billing", "env": "prod"})["QueueUrl"]
        self.assertEqual(SQS.list_queue_tags(QueueUrl=url)["Tags"], {"team": "billing", "env": "prod"})
        SQS.tag_queue(QueueUrl=url, Tags={"env": "staging", "owner": ""})
        SQS.untag_queue(QueueUrl=url, TagKeys=["team", "absent"])
        self.assertEqual(SQS.list_queue_tags(QueueUrl=url)["Tags"], {"env": "staging", "owner": ""})
        SQS.untag_queue(QueueUrl=url, TagKeys=["env", "owner"])
        self.assertNotIn("Tags", SQS.list_queue_tags(QueueUrl=url))
        # At most 50, checked before anything changes.
        SQS.tag_queue(QueueUrl=url, Tags={f"k{i}": "v" for i in range(50)})
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            SQS.tag_queue(QueueUrl=url, Tags={"one-too-many": "v"})
        self.assertEqual(error_code(e.exception), "InvalidParameterValue")
        self.assertEqual(len(SQS.list_queue_tags(QueueUrl=url)["Tags"]), 50)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            SQS.tag_queue(QueueUrl=url, Tags={"k" * 129: "v"})
        self.assertEqual(error_code(e.exception), "InvalidParameterValue")

    def test_purge(self):
        url = make_queue("purge")
        SQS.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)]
        )
        a = SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        self.assertEqual(a["Attributes"]["ApproximateNumberOfMessages"], "3")
        SQS.purge_queue(QueueUrl=url)
        a = SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        self.assertEqual(a["Attributes"]["ApproximateNumberOfMessages"], "0")
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url))


class Messages(unittest.TestCase):
    ATTRS = {
        "color": {"DataType": "String", "StringValue": "blue"},
        "weight": {"DataType": "Number", "StringValue": "12.5"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xfe"},
        "unit": {"DataType": "String.label", "StringValue": "kg"},
    }

    def test_send_and_receive_with_attributes_and_digests(self):
        url = make_queue("attrs-msg")
        body = "héllo wörld ✓"
        r = SQS.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=self.ATTRS)
        self.assertEqual(r["MD5OfMessageBody"], md5_of_body(body))
        self.assertEqual(r["MD5OfMessageAttributes"], md5_of_attributes(self.ATTRS))
        self.assertNotIn("SequenceNumber", r)
        sent_at = int(time.time() * 1000)

        m = SQS.receive_message(
            QueueUrl=url,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=1,
        )["Messages"][0]
        self.assertEqual(m["MessageId"], r["MessageId"])
        self.assertEqual(m["Body"], body)
        self.assertEqual(m["MD5OfBody"], md5_of_body(body))
        self.assertEqual(m["MessageAttributes"], self.ATTRS)
        self.assertEqual(m["MD5OfMessageAttributes"], md5_of_attributes(self.ATTRS))
        self.assertEqual(m["Attributes"]["ApproximateReceiveCount"], "1")
        self.assertLess(abs(int(m["Attributes"]["SentTimestamp"]) - sent_at), 60_000)

        # Asking for some attributes answers those, with their digest.
        SQS.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        m = SQS.receive_message(
            QueueUrl=url, MessageAttributeNames=["color", "unit"], AttributeNames=["ApproximateReceiveCount"]
        )["Messages"][0]
        some = {k: self.ATTRS[k] for k in ("color", "unit")}
        self.assertEqual(m["MessageAttributes"], some)
        self.assertEqual(m["MD5OfMessageAttributes"], md5_of_attributes(some))
        self.assertEqual(m["Attributes"], {"ApproximateReceiveCount": "2"})
        SQS.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url))

    def test_batch_send_with_a_bad_entry(self):
        url = make_queue("batch")
        entries = [
            {"Id": "a", "MessageBody": "one", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
            {"Id": "b", "MessageBody": "two", "DelaySeconds": 0},
            {"Id": "bad", "MessageBody": "three", "MessageAttributes": {"AWS.reserved": {"DataType": "String", "StringValue": "v"}}},
        ]
        r = SQS.send_message_batch(QueueUrl=url, Entries=entries)
        ok = {e["Id"]: e for e in r["Successful"]}
        self.assertEqual(sorted(ok), ["a", "b"])
        self.assertEqual(ok["a"]["MD5OfMessageBody"], md5_of_body("one"))
        self.assertEqual(ok["a"]["MD5OfMessageAttributes"], md5_of_attributes(entries[0]["MessageAttributes"]))
        self.assertEqual([f["Id"] for f in r["Failed"]], ["bad"])
        self.assertTrue(r["Failed"][0]["SenderFault"])
        self.assertEqual(r["Failed"][0]["Code"], "InvalidParameterValue")

        # A message mqd refuses (too large for the queue) fails alone.
        small = make_queue("batch-small", MaximumMessageSize=1024)
        r = SQS.send_message_batch(
            QueueUrl=small,
            Entries=[{"Id": "fits", "MessageBody": "x"}, {"Id": "big", "MessageBody": "y" * 2000}],
        )
        self.assertEqual([e["Id"] for e in r["Successful"]], ["fits"])
        self.assertEqual([e["Id"] for e in r["Failed"]], ["big"])

        got = receive_all(url, 2)
        self.assertEqual(sorted(m["Body"] for m in got), ["one", "two"])
        d = SQS.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
            + [{"Id": "junk", "ReceiptHandle": "not-a-receipt"}],
        )
        self.assertEqual(sorted(e["Id"] for e in d["Successful"]), ["d0", "d1"])
        self.assertEqual(d["Failed"][0]["Id"], "junk")
        self.assertEqual(d["Failed"][0]["Code"], "ReceiptHandleIsInvalid")

    def test_batch_errors(self):
        url = make_queue("batch-errors")
        cases = [
            ([], "AWS.SimpleQueueService.EmptyBatchRequest", SQS.exceptions.EmptyBatchRequest),
            (
                [{"Id": str(i), "MessageBody": "x"} for i in range(11)],
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                SQS.exceptions.TooManyEntriesInBatchRequest,
            ),
            (
                [{"Id": "same", "MessageBody": "x"}, {"Id": "same", "MessageBody": "y"}],
                "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                SQS.exceptions.BatchEntryIdsNotDistinct,
            ),
            (
                [{"Id": "white space", "MessageBody": "x"}],
                "AWS.SimpleQueueService.InvalidBatchEntryId",
                SQS.exceptions.InvalidBatchEntryId,
            ),
        ]
        for entries, code, exc in cases:
            with self.assertRaises(exc) as e:
                SQS.send_message_batch(QueueUrl=url, Entries=entries)
            self.assertEqual(error_code(e.exception), code)
        # Nothing was stored by any of them.
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url))

    def test_long_polling_returns_a_message_sent_during_the_wait(self):
        url = make_queue("long-poll")
        out = {}

        def receive():
            start = time.monotonic()
            out["r"] = SQS.receive_message(QueueUrl=url, WaitTimeSeconds=10)
            out["elapsed"] = time.monotonic() - start

        t = threading.Thread(target=receive)
        t.start()
        time.sleep(1.0)
        SQS.send_message(QueueUrl=url, MessageBody="worth the wait")
        t.join()
        self.assertEqual(out["r"]["Messages"][0]["Body"], "worth the wait")
        self.assertGreaterEqual(out["elapsed"], 0.9)

        # With nothing to receive the poll ends empty after its wait.
        start = time.monotonic()
        SQS.delete_message(QueueUrl=url, ReceiptHandle=out["r"]["Messages"][0]["ReceiptHandle"])
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url, WaitTimeSeconds=1))
        self.assertGreaterEqual(time.monotonic() - start, 0.9)

    def test_visibility_changes(self):
        url = make_queue("visibility", VisibilityTimeout=30)
        SQS.send_message_batch(QueueUrl=url, Entries=[{"Id": "1", "MessageBody": "a"}, {"Id": "2", "MessageBody": "b"}])
        got = receive_all(url, 2)
        self.assertEqual(len(got), 2)
        # Hidden for 30 s: nothing to receive now.
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url))
        r = SQS.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[{"Id": f"e{i}", "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(got)],
        )
        self.assertEqual(len(r["Successful"]), 2)
        again = receive_all(url, 2, AttributeNames=["ApproximateReceiveCount"])
        self.assertEqual(sorted(m["Body"] for m in again), ["a", "b"])
        self.assertTrue(all(m["Attributes"]["ApproximateReceiveCount"] == "2" for m in again))
        # The first delivery's receipt is stale now: it can no longer change visibility.
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            SQS.change_message_visibility(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=10)
        self.assertEqual(error_code(e.exception), "InvalidParameterValue")
        for m in again:
            SQS.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def test_dead_letter_queue_after_max_receives(self):
        dlq = make_queue("dlq")
        dlq_arn = SQS.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
        src = make_queue("dlq-source", RedrivePolicy=policy)
        a = SQS.get_queue_attributes(QueueUrl=src, AttributeNames=["RedrivePolicy"])["Attributes"]
        self.assertEqual(json.loads(a["RedrivePolicy"]), {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
        self.assertEqual(SQS.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"], [src])

        SQS.send_message(QueueUrl=src, MessageBody="poison")
        for i in range(2):
            m = SQS.receive_message(QueueUrl=src, VisibilityTimeout=0, WaitTimeSeconds=1)["Messages"][0]
            self.assertEqual(m["Body"], "poison")
        # The third receive moves it to the dead-letter queue instead of delivering it.
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=src, WaitTimeSeconds=1))
        m = SQS.receive_message(QueueUrl=dlq, WaitTimeSeconds=2)["Messages"][0]
        self.assertEqual(m["Body"], "poison")


class Fifo(unittest.TestCase):
    def test_order_per_group_and_deduplication(self):
        url = make_queue("orders.fifo", FifoQueue="true")
        a = SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue", "ContentBasedDeduplication"])
        self.assertEqual(a["Attributes"], {"FifoQueue": "true", "ContentBasedDeduplication": "false"})
        sent = []
        for i in range(4):
            for g in ("g1", "g2"):
                r = SQS.send_message(
                    QueueUrl=url, MessageBody=f"{g}-{i}", MessageGroupId=g, MessageDeduplicationId=f"{g}-{i}"
                )
                sent.append(r)
        self.assertTrue(all(len(r["SequenceNumber"]) == 20 for r in sent))
        # The same deduplication id within the window: acknowledged, not stored again.
        again = SQS.send_message(QueueUrl=url, MessageBody="g1-0", MessageGroupId="g1", MessageDeduplicationId="g1-0")
        self.assertEqual(again["MessageId"], sent[0]["MessageId"])

        bodies = []
        while len(bodies) < 8:
            r = SQS.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["MessageGroupId", "SequenceNumber"]
            )
            msgs = r.get("Messages", [])
            self.assertTrue(msgs, f"stopped after {bodies}")
            for m in msgs:
                self.assertEqual(m["Attributes"]["MessageGroupId"], m["Body"].split("-")[0])
                bodies.append(m["Body"])
                SQS.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        for g in ("g1", "g2"):
            self.assertEqual([b for b in bodies if b.startswith(g)], [f"{g}-{i}" for i in range(4)])
        self.assertNotIn("Messages", SQS.receive_message(QueueUrl=url))

        # FIFO queues need a group; their names end with .fifo.
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            SQS.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="x")
        self.assertEqual(error_code(e.exception), "InvalidParameterValue")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            make_queue("not-fifo", FifoQueue="true")
        self.assertEqual(error_code(e.exception), "InvalidParameterValue")

    def test_content_based_deduplication(self):
        url = make_queue("content.fifo", FifoQueue="true", ContentBasedDeduplication="true")
        a = SQS.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
        b = SQS.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
        c = SQS.send_message(QueueUrl=url, MessageBody="other", MessageGroupId="g")
        self.assertEqual(a["MessageId"], b["MessageId"])
        self.assertNotEqual(a["MessageId"], c["MessageId"])
        n = SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        self.assertEqual(n["Attributes"]["ApproximateNumberOfMessages"], "2")


class Errors(unittest.TestCase):
    def test_missing_queue(self):
        with self.assertRaises(SQS.exceptions.QueueDoesNotExist) as e:
            SQS.get_queue_url(QueueName="no-such-queue")
        self.assertEqual(error_code(e.exception), "AWS.SimpleQueueService.NonExistentQueue")
        url = ENDPOINT + "/000000000000/no-such-queue"
        with self.assertRaises(SQS.exceptions.QueueDoesNotExist):
            SQS.send_message(QueueUrl=url, MessageBody="x")
        with self.assertRaises(SQS.exceptions.QueueDoesNotExist):
            SQS.receive_message(QueueUrl=url)

    def test_bad_parameters(self):
        url = make_queue("params")
        for call, code in [
            (lambda: SQS.receive_message(QueueUrl=url, MaxNumberOfMessages=11), "InvalidParameterValue"),
            (lambda: SQS.receive_message(QueueUrl=url, WaitTimeSeconds=21), "InvalidParameterValue"),
            (lambda: SQS.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901), "InvalidParameterValue"),
            (lambda: SQS.send_message(QueueUrl=url, MessageBody="a\x00b"), "InvalidParameterValue"),
            (lambda: SQS.set_queue_attributes(QueueUrl=url, Attributes={"Colour": "red"}), "InvalidAttributeName"),
            (lambda: SQS.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "soon"}), "InvalidAttributeValue"),
            (lambda: SQS.get_queue_attributes(QueueUrl=url, AttributeNames=["Colour"]), "InvalidAttributeName"),
            (lambda: SQS.delete_message(QueueUrl=url, ReceiptHandle="garbage"), "ReceiptHandleIsInvalid"),
            (lambda: SQS.add_permission(QueueUrl=url, Label="l", AWSAccountIds=["1"], Actions=["*"]), "AWS.SimpleQueueService.UnsupportedOperation"),
        ]:
            with self.assertRaises(botocore.exceptions.ClientError) as e:
                call()
            self.assertEqual(error_code(e.exception), code)
            self.assertEqual(e.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
            self.assertTrue(e.exception.response["Error"]["Message"])

    def test_signatures(self):
        bad_secret = client(secret="0" * 64)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            bad_secret.list_queues()
        self.assertEqual(error_code(e.exception), "SignatureDoesNotMatch")
        self.assertEqual(e.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        unknown = client(key="nobody", secret="0" * 64)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            unknown.list_queues()
        self.assertEqual(error_code(e.exception), "InvalidClientTokenId")
        # An unsigned request.
        req = urllib.request.Request(
            ENDPOINT + "/",
            data=b"{}",
            method="POST",
            headers={"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
        )
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(e.exception.code, 403)
        self.assertEqual(e.exception.headers["x-amzn-query-error"], "MissingAuthenticationToken;Sender")
        self.assertEqual(json.loads(e.exception.read())["__type"], "com.amazonaws.sqs#MissingAuthenticationToken")

    def test_grants_apply(self):
        limited = client(os.environ["MQD_SQS_LIMITED_KEY"], os.environ["MQD_SQS_LIMITED_SECRET"])
        mine = SQS.create_queue(QueueName="limited-inbox")["QueueUrl"]
        other = make_queue("not-for-limited")
        r = limited.send_message(QueueUrl=mine, MessageBody="allowed")
        self.assertEqual(r["MD5OfMessageBody"], md5_of_body("allowed"))
        for call in [
            lambda: limited.send_message(QueueUrl=other, MessageBody="x"),
            lambda: limited.receive_message(QueueUrl=mine),
            lambda: limited.create_queue(QueueName="limited-new"),
        ]:
            with self.assertRaises(botocore.exceptions.ClientError) as e:
                call()
            self.assertEqual(error_code(e.exception), "AccessDenied")
            self.assertEqual(e.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)
        # Listing shows only what the user may see.
        self.assertEqual(limited.list_queues().get("QueueUrls"), [mine])


if __name__ == "__main__":
    unittest.main(verbosity=2)
