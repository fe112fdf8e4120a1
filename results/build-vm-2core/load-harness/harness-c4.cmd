# kvxfer pair --layers 1 --kv-heads 1 --head-dim 64 -p 16 -g request --arrivals fixed:2000,5000,10000 -n 5000 -w 100 --concurrency 4 --json harness-c4.json --csv harness-c4.csv
