// A minimal @livekit/agents worker for the live tests (tests/test_agent_frameworks.py).
//
// It registers with the livekit-server named by LIVEKIT_URL under the agent name AGENT_NAME
// (explicit dispatch: the server sends it a job only when asked to). On a job it joins the
// room, publishes one silent audio track (as a voice agent does: a publisher's join and leave
// reach the other participants at once), and writes what it saw of itself to
// $AGENT_EVENTS_DIR/events.jsonl, one JSON object a line. It leaves its room once a file
// named leave-<room> appears in that folder. It runs no model session: it sends no usage.
//
// Usage: node agent.js start   (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AGENT_NAME,
//                               AGENT_EVENTS_DIR in the environment)
import { AutoSubscribe, ServerOptions, cli, defineAgent } from '@livekit/agents';
import {
  AudioFrame,
  AudioSource,
  LocalAudioTrack,
  TrackPublishOptions,
  TrackSource,
} from '@livekit/rtc-node';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const eventsDir = process.env.AGENT_EVENTS_DIR;

function record(event) {
  appendFileSync(join(eventsDir, 'events.jsonl'), `${JSON.stringify(event)}\n`);
}

const now = () => Date.now() / 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function frameworkVersion() {
  const url = new URL('./node_modules/@livekit/agents/package.json', import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')).version;
}

export default defineAgent({
  entry: async (ctx) => {
    const connectStarted = now();
    await ctx.connect(undefined, AutoSubscribe.SUBSCRIBE_NONE);
    const connected = now();
    const source = new AudioSource(48000, 1);
    const track = LocalAudioTrack.createAudioTrack('agent-voice', source);
    const options = new TrackPublishOptions();
    options.source = TrackSource.SOURCE_MICROPHONE;
    const me = ctx.room.localParticipant;
    await me.publishTrack(track, options);
    await source.captureFrame(new AudioFrame(new Int16Array(480), 48000, 1, 480));
    const room = ctx.room.name;
    record({
      event: 'joined',
      framework: '@livekit/agents',
      version: frameworkVersion(),
      job_agent_name: ctx.job.agentName,
      room,
      room_sid: await ctx.room.getSid(),
      identity: me.identity,
      sid: me.sid,
      attributes: me.attributes,
      connect_started: connectStarted,
      connected,
    });
    while (!existsSync(join(eventsDir, `leave-${room}`))) {
      await sleep(50);
    }
    const leaveRequested = now();
    await source.close();
    await ctx.room.disconnect();
    record({ event: 'left', room, leave_requested: leaveRequested, disconnected: now() });
    ctx.shutdown('asked to leave');
  },
});

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  record({ event: 'started', pid: process.pid });
  cli.runApp(
    new ServerOptions({
      agent: fileURLToPath(import.meta.url),
      agentName: process.env.AGENT_NAME,
      // health-check HTTP server: loopback, on the free port the test picked (the
      // framework reads a 0 as its default, 8081, in `start` mode)
      host: '127.0.0.1',
      port: Number(process.env.AGENT_HTTP_PORT),
      numIdleProcesses: 0,
      // a job process loads the framework before it runs: on a loaded machine that has
      // taken more than the default 10 s
      initializeProcessTimeout: 60 * 1000,
    }),
  );
}
