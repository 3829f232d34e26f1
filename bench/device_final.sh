#!/usr/bin/env bash
# On the GPU machine: tg128 of the per-op path and the persistent decode kernel, most wanted
# first, then the persistent = phased check; one log file ($OUT/final.txt).
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/final.txt
run() {
  python3 -m llmgpu.cli bench --shape "$1" -p 0 -n 128 -r 3 --stream-bytes $((256 << 20)) --json --decode "$2" > /tmp/b.json 2>/tmp/b.err \
    && python3 -c "import json; d=json.load(open('/tmp/b.json')); r=d['rows'][0]; print('$1', '$2', round(r['tps'],1), '+-', round(r['sd'],1), r['schedule'], r.get('workgroups'), round(r['roofline_pct'],1))" | tee -a "$log" \
    || tail -2 /tmp/b.err | tee -a "$log"
}
run llama-3.2-1b ops; run llama-3.2-1b persistent
run llama-3.1-8b ops; run llama-3.1-8b persistent
run smollm2-135m ops; run smollm2-135m persistent
timeout 90 python3 -m pytest -q -x tests/test_decode.py -k "persistent" -p no:cacheprovider 2>&1 | tail -2 | tee -a "$log"
