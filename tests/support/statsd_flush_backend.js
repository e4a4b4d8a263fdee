/*
 * A backend for the reference StatsD server (npm package `statsd`) that appends each flush to a
 * file as one JSON object per line: {"timestamp": <s>, "counters": {...}, "gauges": {...}}.
 *
 * Why: the end-to-end StatsD test needs to read back exactly what the reference server made of
 * crashwatch's datagrams, after its own parsing, aggregation and flushing. The built-in `console`
 * backend prints util.inspect() output, which is not meant to be parsed; a JSON line per flush is.
 *
 * Configuration (in the StatsD config file):
 *     backends: ["/abs/path/statsd_flush_backend.js"],
 *     flushFile: { path: "/abs/path/flushes.jsonl" }
 */
'use strict';

const fs = require('fs');

exports.init = function (startupTime, config, events, logger) {
  const path = config.flushFile && config.flushFile.path;
  if (!path) {
    logger.log('statsd_flush_backend: flushFile.path is not set', 'ERROR');
    return false;
  }
  events.on('flush', function (timestamp, metrics) {
    const line = JSON.stringify({
      timestamp: timestamp,
      counters: metrics.counters,
      gauges: metrics.gauges,
    });
    // Synchronous, one write per flush: the flush is in the file before the server clears its
    // counters for the next interval. Readers skip a last line that has no newline yet.
    fs.appendFileSync(path, line + '\n');
  });
  events.on('status', function (write) {
    write(null, 'flush_file', 'path', path);
  });
  return true;
};
