//! What a worker offers: one slot per GPU (model and memory from nvidia-smi when it is
//! there), or CPU slots on a machine without one.

use surgery_proto::v1 as pb;
use tch::Device;

#[derive(Debug, Clone)]
pub struct SlotSpec {
    pub device: Device,
    pub info: pb::Slot,
}

/// `(name, total MiB)` per GPU, in index order, if nvidia-smi answers.
fn nvidia_smi() -> Vec<(String, u64)> {
    let output = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        .output();
    let Ok(output) = output else { return Vec::new() };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, mib) = line.rsplit_once(',')?;
            Some((name.trim().to_string(), mib.trim().parse().ok()?))
        })
        .collect()
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The slots of this machine: every CUDA device, or `cpu_slots` CPU slots.
pub fn discover(cuda: bool, cpu_slots: u32) -> anyhow::Result<Vec<SlotSpec>> {
    if !cuda {
        let memory = total_memory_bytes();
        return Ok((0..cpu_slots.max(1))
            .map(|_| SlotSpec {
                device: Device::Cpu,
                info: pb::Slot {
                    device: "cpu".into(),
                    model: String::new(),
                    memory_bytes: memory,
                },
            })
            .collect());
    }
    let count = tch::Cuda::device_count();
    if count == 0 {
        anyhow::bail!(
            "--device cuda, but LibTorch sees no CUDA device ({})",
            crate::runtime::describe_devices()
        );
    }
    let smi = nvidia_smi();
    Ok((0..count as usize)
        .map(|i| {
            let (model, mib) = smi.get(i).cloned().unwrap_or_else(|| (format!("CUDA device {i}"), 0));
            SlotSpec {
                device: Device::Cuda(i),
                info: pb::Slot {
                    device: "cuda".into(),
                    model,
                    memory_bytes: mib << 20,
                },
            }
        })
        .collect())
}
