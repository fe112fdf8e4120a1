# kvxfer-send -t tcp -m llama-3.1-8b --prompt-mix 1k:60,8k:30,32k:10 -g layer -w 3 --decode-hold 50 --decode-buffer 64GiB --concurrency 4 --arrivals poisson:12,16 -n 30
