set -e
cd "$(dirname "$0")/../../.."  # the repository root
M=.venv/bin/mimkit
D=${1:-benchmarks/results/mfu_cpu}
for pb in mae_vit_tiny_cifar:32 lomar_vit_tiny_cifar:32 convmixer_256_8_cifar:32 vitdet_tiny_coco128:2 ibot_vit_tiny_cifar:16; do
  p=${pb%%:*}; b=${pb##*:}
  $M benchmark --config $p --batch-size $b --steps 3 --warmup 1 --json $D/$p.json
done
$M benchmark --config mae_vit_base_patch16 --batch-size 8 --steps 3 --warmup 2 --profile --json $D/profile_mae_vit_base_patch16.json
$M benchmark --config mae_vit_tiny_cifar --batch-size 128 --steps 3 --warmup 2 --profile --json $D/profile_mae_vit_tiny_cifar.json
