# kvxfer-send -t nixl --nixl-op write -m gpt-oss-120b --hma off -p 8192,32768 -g layer,block -n 20 -w 2
