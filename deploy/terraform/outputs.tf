output "global_url" {
  description = "Where clients start (login, /closestToMe)."
  value       = "https://${var.global_name}.${var.domain}"
}

output "server_urls" {
  description = "Locked-server URLs by region."
  value       = { for k, m in module.region : k => m.server_urls }
}

output "discovery_urls" {
  description = "Discovery node URLs (private)."
  value       = module.discovery.discovery_urls
}

output "prometheus_targets" {
  description = "Admin listeners of the proxies and the discovery nodes' listeners, for scrape configs."
  value = {
    proxies   = flatten([for m in values(module.region) : [for ip in m.server_private_ips : "${ip}:9081"]])
    discovery = [for ip in module.discovery.discovery_private_ips : "${ip}:7070"]
  }
}
