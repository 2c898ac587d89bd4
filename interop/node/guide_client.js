// The integration guide's Node.js service, as other teams write it: kafkajs
// as is (no codec plugins), `eachMessage` handlers that JSON.parse the value
// and read `envelope.data`, producers that send the envelope keyed by phone.
//
//   node guide_client.js consume <bootstrap> <topics,comma,separated> <WantedType,...>
//   node guide_client.js reply <bootstrap> <to_phone> <original_message_id> <text>
//   node guide_client.js edge <bootstrap> <app_secret> <from_phone> <message_id> <text>
//
// `consume` prints a JSON summary and exits 0 once every wanted event type
// was read with the guide's required fields, 1 otherwise. `edge` publishes a
// WhatsApp POST the way an HTTP edge function does: {id, headers, body,
// timestamp} on whatsapp.webhook.inbound, keyed by the webhook id.
'use strict';

const crypto = require('crypto');
const { Kafka, logLevel } = require('kafkajs');

const REQUIRED = {
  envelope: ['event_id', 'timestamp', 'event_type', 'version', 'data', 'metadata', 'attempt_count', 'max_attempts'],
  MessageReceived: ['message_id', 'from_phone', 'message_type', 'content', 'received_at', 'metadata'],
  ResponseReady: ['original_message_id', 'to_phone', 'response_type', 'content', 'generated_at'],
};

function kafka(bootstrap) {
  return new Kafka({ clientId: 'guide-node', brokers: [bootstrap], logLevel: logLevel.ERROR });
}

function missing(object, fields) {
  return fields.filter((field) => object === null || typeof object !== 'object' || !(field in object));
}

async function consume(bootstrap, topics, wanted, timeoutMs = 60000) {
  const consumer = kafka(bootstrap).consumer({ groupId: `guide-node-${crypto.randomUUID()}` });
  const valid = {};
  const invalid = [];
  let crashed = null;
  await consumer.connect();
  consumer.on(consumer.events.CRASH, (event) => { crashed = String(event.payload.error); });
  for (const topic of topics) {
    await consumer.subscribe({ topic, fromBeginning: true });
  }
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      try {
        const envelope = JSON.parse(message.value.toString());
        const problems = missing(envelope, REQUIRED.envelope);
        const dataFields = REQUIRED[envelope.event_type];
        if (dataFields) problems.push(...missing(envelope.data, dataFields).map((f) => `data.${f}`));
        if (!Number.isInteger(envelope.max_attempts)) problems.push('max_attempts is not an integer');
        if (Number.isNaN(Date.parse(envelope.timestamp))) problems.push('timestamp does not parse');
        if (problems.length) {
          invalid.push(`${topic}/${partition}@${message.offset}: missing ${problems.join(', ')}`);
        } else {
          valid[envelope.event_type] = (valid[envelope.event_type] || 0) + 1;
        }
      } catch (error) {
        invalid.push(`${topic}/${partition}@${message.offset}: ${error}`);
      }
    },
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !crashed && !wanted.every((type) => valid[type] > 0)) {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await consumer.disconnect();
  if (crashed) invalid.push(`consumer crashed: ${crashed}`);
  const ok = wanted.every((type) => valid[type] > 0) && invalid.length === 0;
  console.log(JSON.stringify({ client: 'node', valid, invalid, ok }));
  return ok ? 0 : 1;
}

async function send(bootstrap, topic, key, value) {
  // kafkajs's idempotent producer cannot start on librdkafka's mock cluster; the plain one can.
  const producer = kafka(bootstrap).producer();
  await producer.connect();
  await producer.send({ topic, messages: [{ key, value: JSON.stringify(value) }] });
  await producer.disconnect();
}

async function reply(bootstrap, toPhone, original, text) {
  const now = new Date().toISOString();
  await send(bootstrap, 'conversation.responses', toPhone, {
    event_id: crypto.randomUUID(),
    timestamp: now,
    event_type: 'ResponseReady',
    version: '1.0',
    data: {
      original_message_id: original,
      to_phone: toPhone,
      response_type: 'Text',
      content: { Text: { message: text } },
      generated_at: now,
      priority: 'Normal',
    },
    metadata: { processed_by: 'node-guide-service', processing_timestamp: now },
    attempt_count: 1,
    max_attempts: 3,
  });
  console.log(JSON.stringify({ client: 'node', produced: true }));
  return 0;
}

async function edge(bootstrap, secret, fromPhone, messageId, text) {
  // What WhatsApp POSTs (compact JSON) and signs.
  const raw = JSON.stringify({
    object: 'whatsapp_business_account',
    entry: [{
      id: '102290129340398',
      changes: [{
        field: 'messages',
        value: {
          messaging_product: 'whatsapp',
          metadata: { display_phone_number: '15550000000', phone_number_id: '123456' },
          contacts: [{ profile: { name: 'Edge' }, wa_id: fromPhone.replace('+', '') }],
          messages: [{
            from: fromPhone.replace('+', ''),
            id: messageId,
            timestamp: String(Math.floor(Date.now() / 1000)),
            type: 'text',
            text: { body: text },
          }],
        },
      }],
    }],
  });
  const signature = 'sha256=' + crypto.createHmac('sha256', secret).update(raw).digest('hex');
  const id = crypto.randomUUID();
  await send(bootstrap, 'whatsapp.webhook.inbound', id, {
    id,
    headers: { 'content-type': 'application/json', 'x-hub-signature-256': signature },
    body: JSON.parse(raw),
    timestamp: new Date().toISOString(),
  });
  console.log(JSON.stringify({ client: 'node', edge: id }));
  return 0;
}

async function main() {
  const [command, bootstrap, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'consume': return consume(bootstrap, rest[0].split(','), rest[1].split(','));
    case 'reply': return reply(bootstrap, rest[0], rest[1], rest[2]);
    case 'edge': return edge(bootstrap, rest[0], rest[1], rest[2], rest[3]);
    default: throw new Error(`unknown command ${command}`);
  }
}

main().then((code) => process.exit(code), (error) => {
  console.error(error);
  process.exit(1);
});
