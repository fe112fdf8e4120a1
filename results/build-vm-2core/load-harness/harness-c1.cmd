# kvxfer pair --layers 1 --kv-heads 1 --head-dim 64 -p 16 -g request --arrivals fixed:2000,5000,10000 -n 5000 -w 100 --concurrency 1 --json harness-c1.json --csv harness-c1.csv
