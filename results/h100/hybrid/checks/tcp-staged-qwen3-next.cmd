# kvxfer-send -t tcp -m qwen3-next-80b-a3b -p 8192,32768 -g layer,block -n 10 -w 2
