#!/usr/bin/env bash
# One task of launch/slurm/ember.sbatch: its role from SLURM_PROCID (0 the
# scheduler, 1..EMBER_SERVERS the servers, the rest the workers), its log in
# EMBER_LOG_DIR (scheduler.out holds the scheduler's progress and final line).
set -euo pipefail
rank="$SLURM_PROCID"
key_flags=()
[ -n "${EMBER_KEYS_DIR:-}" ] && key_flags+=(--keys_dir="$EMBER_KEYS_DIR")
listen_flags=(--host="$EMBER_BIND_HOST")
[ "${EMBER_INSECURE:-0}" = 1 ] && listen_flags+=(--insecure)
if [ "$rank" -eq 0 ]; then
  name=scheduler
  args=(scheduler --config="$EMBER_CONFIG" --port="$EMBER_PORT" --num_servers="$EMBER_SERVERS"
        --num_workers="$EMBER_WORKERS" --checkpoint_dir="$EMBER_CHECKPOINT_DIR"
        --export_dir="$EMBER_JOB_DIR/export" --metrics_file="$EMBER_JOB_DIR/metrics.jsonl"
        --result_file="$EMBER_LOG_DIR/result.txt")
  [ -n "${EMBER_DATA_DIR:-}" ] && args+=(--data_dir="$EMBER_DATA_DIR")
  [ "${EMBER_EPOCHS:-0}" -gt 0 ] && args+=(--epochs="$EMBER_EPOCHS")
  [ "${EMBER_CHECKPOINT_EVERY:-0}" -gt 0 ] && args+=(--checkpoint_every_seconds="$EMBER_CHECKPOINT_EVERY")
  [ "${EMBER_RESUME:-0}" = 1 ] && args+=(--resume)
  args+=("${listen_flags[@]}")
elif [ "$rank" -le "$EMBER_SERVERS" ]; then
  name="server$rank"
  port=0
  # Fixed server ports: EMBER_SERVER_PORT + the server's index on its node.
  [ "${EMBER_SERVER_PORT:-0}" -gt 0 ] && port=$((EMBER_SERVER_PORT + ${SLURM_LOCALID:-0}))
  # The advertised address defaults to this machine's hostname with --host=0.0.0.0.
  args=(server --scheduler="$EMBER_SCHEDULER" --port="$port" "${listen_flags[@]}")
else
  name="worker$((rank - EMBER_SERVERS))"
  args=(worker --scheduler="$EMBER_SCHEDULER")
fi
log="$EMBER_LOG_DIR/$name.log"
echo "== $name: task $rank on $(hostname), $(date '+%F %T')" >>"$log"
if [ "$name" = scheduler ]; then
  exec "$EMBER_BINARY" "${args[@]}" "${key_flags[@]+"${key_flags[@]}"}" >>"$EMBER_LOG_DIR/scheduler.out" 2>>"$log"
fi
exec "$EMBER_BINARY" "${args[@]}" "${key_flags[@]+"${key_flags[@]}"}" >/dev/null 2>>"$log"
