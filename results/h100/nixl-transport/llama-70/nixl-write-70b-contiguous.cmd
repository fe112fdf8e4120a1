# kvxfer-send -t nixl --nixl-op write -m llama-3.1-70b -g block -p 1024,8192,32768 -n 10 -w 2
