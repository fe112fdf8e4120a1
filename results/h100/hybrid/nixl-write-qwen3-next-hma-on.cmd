# kvxfer-send -t nixl --nixl-op write -m qwen3-next-80b-a3b --hma on -p 8192,32768 -g layer,block -n 20 -w 2
