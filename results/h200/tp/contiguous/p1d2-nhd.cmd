# P=1 D=2 --kv-layout nhd -t ucx --ucx-op put -m llama-3.1-70b -g block -p 1024,8192 -n 5
kvxfer-send --connect 127.0.0.1:36887 --connect 127.0.0.1:32819 --prefill-tp 1 --decode-tp 2 --prefill-rank 0 --kv-layout nhd --memory gpu --device 0 -t ucx --ucx-op put -m llama-3.1-70b -g block -p 1024,8192 -n 5
