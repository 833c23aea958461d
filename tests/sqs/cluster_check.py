"""Any node of a cluster serves the SQS API: queues created through one node, messages
sent through a second and received and deleted through a third, whichever node leads
each queue's shard. Run by tests/it/sqs.rs with MQD_SQS_ENDPOINTS (three, comma-separated),
MQD_SQS_KEY and MQD_SQS_SECRET."""

import os

import boto3

endpoints = os.environ["MQD_SQS_ENDPOINTS"].split(",")
clients = [
    boto3.client(
        "sqs",
        endpoint_url=e,
        region_name="us-east-1",
        aws_access_key_id=os.environ["MQD_SQS_KEY"],
        aws_secret_access_key=os.environ["MQD_SQS_SECRET"],
    )
    for e in endpoints
]
first, second, third = clients

# Eight queues land on several of the shards, led by different nodes.
urls = [first.create_queue(QueueName=f"spread-{i}")["QueueUrl"] for i in range(8)]
for i, url in enumerate(urls):
    second.send_message(QueueUrl=url, MessageBody=f"message {i}")
for i, url in enumerate(urls):
    msgs = third.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages", [])
    assert [m["Body"] for m in msgs] == [f"message {i}"], (url, msgs)
    second.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    n = third.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert n == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}, (url, n)
listed = sorted(third.list_queues(QueueNamePrefix="spread-")["QueueUrls"])
assert [u.rsplit("/", 1)[1] for u in listed] == [f"spread-{i}" for i in range(8)], listed
print("cluster: every node served every queue")
