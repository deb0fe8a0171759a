// ebb on Azure Container Apps, plus one worker app scaled by it.
//
//   az deployment group create -g <rg> -f deploy/aca/main.bicep \
//     -p ebbImage=<registry>/ebb:0.1.0 registryServer=<registry> serviceBusNamespaceName=<ns>
//
// What it deploys (see deploy/aca/README.md for the parameters and the pitfalls):
// - optionally a Container Apps environment (with a Log Analytics workspace for the system logs);
// - a user-assigned managed identity for ebb and role assignments on the sources named by the
//   *Name parameters (each optional; resources in this resource group);
// - ebb: internal ingress, one replica, never zero;
// - a worker app whose scale rule reads ebb:
//   route 'bridge' (default): a built-in `metrics-api` rule reads ebb's HTTP bridge
//     (ingress → port 8080); ebb serves the ScaledObject declared in its config file;
//   route 'external': a `custom` rule of type `external` / `external-push` calls ebb's gRPC port
//     (ingress → port 9090, HTTP/2). Container Apps documents no support for external scalers,
//     and public reports go both ways; the bridge uses only documented scale rule types.
//
// ebb authenticates to Azure sources with its own identity: Container Apps hands a scale rule's
// `auth` and `identity` to KEDA, never to an external scaler or to a metrics-api endpoint. ebb
// lends that identity only as its config file's `access` section allows: the generated file
// binds accessNamespaces (default "default") to exactly the resources triggerMetadata reads.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Region of the new resources.')
param location string = resourceGroup().location

@description('Prefix of the names of the resources this template creates: <prefix> (ebb app), <prefix>-id, <prefix>-env, <prefix>-logs.')
@minLength(2)
@maxLength(24)
param namePrefix string = 'ebb'

@description('Resource ID of an existing Container Apps environment. Empty: create <namePrefix>-env (workload profiles, Consumption) with the Log Analytics workspace <namePrefix>-logs.')
param environmentId string = ''

@description('ebb image built with deploy/Dockerfile, e.g. myregistry.azurecr.io/ebb:0.1.0.')
param ebbImage string

@description('Registry server of private images, e.g. myregistry.azurecr.io. Both apps pull with ebb\'s user-assigned identity, which needs AcrPull on that registry before the deployment. Empty: public images.')
param registryServer string = ''

@description('How the worker\'s scale rule reaches ebb. bridge: built-in metrics-api rule → ebb\'s HTTP port 8080. external: KEDA external scaler → ebb\'s gRPC port 9090 (HTTP/2). A container app has one ingress target port, so ebb serves one of the two.')
@allowed([
  'bridge'
  'external'
])
param route string = 'bridge'

@description('Trigger type of the worker\'s rule with route external. external-push keeps StreamIsActive open; Container Apps\' ingress may cut it (240 s request timeout) and KEDA reopens it.')
@allowed([
  'external'
  'external-push'
])
param externalRuleType string = 'external'

@description('Name of the ScaledObject in ebb\'s config (namespace "default"); the bridge URL is /api/v1/scaledobjects/default/<name>.')
param scaledObjectName string = 'orders'

@description('Service Bus namespace (this resource group) ebb reads; ebb\'s identity gets Azure Service Bus Data Owner on it. Empty: no assignment.')
param serviceBusNamespaceName string = ''

@description('Storage account (this resource group) whose queues ebb reads; ebb\'s identity gets Storage Queue Data Reader. Empty: no assignment.')
param storageAccountName string = ''

@description('Event Hubs namespace (this resource group) ebb reads; ebb\'s identity gets Azure Event Hubs Data Receiver. Empty: no assignment.')
param eventHubNamespaceName string = ''

@description('Storage account (this resource group) holding Event Hubs checkpoints; ebb\'s identity gets Storage Blob Data Reader. Empty: no assignment.')
param checkpointStorageAccountName string = ''

@description('Azure Monitor workspace (this resource group) for a prometheus trigger on managed Prometheus; ebb\'s identity gets Monitoring Data Reader. Empty: no assignment.')
param monitorWorkspaceName string = ''

@description('KEDA trigger metadata of the worker, scalerType included, every value a string (README: each scaler\'s section). Names only: ebb uses its own identity. Default: the Service Bus queue "orders" in serviceBusNamespaceName.')
param triggerMetadata object = {
  scalerType: 'azure-servicebus'
  namespace: serviceBusNamespaceName
  queueName: 'orders'
  messageCount: '5'
}

@description('ebb\'s config file, verbatim (YAML; see README "Azure Container Apps bridge"), mounted with both routes. Empty: generated from scaledObjectName and triggerMetadata (with route bridge; outputMode replicas) and an access section binding accessNamespaces to the resources triggerMetadata reads. A verbatim file needs its own access section: ebb refuses its identity to namespaces that no binding names.')
param ebbConfig string = ''

@description('Namespaces (globs) that the generated access section lets use ebb\'s identity for the resources triggerMetadata reads (service, host, entity). The bridge\'s ScaledObject is in "default". With route external, KEDA on Container Apps sends a namespace of its own, which Microsoft does not document: read it in ebb\'s console log and add it. Ignored when ebbConfig is set.')
param accessNamespaces array = [
  'default'
]

@description('Name of the worker app.')
param workerName string = '${namePrefix}-worker'

@description('Worker image. The default is Microsoft\'s quickstart image, a stand-in for your consumer.')
param workerImage string = 'mcr.microsoft.com/k8se/quickstart:latest'

@description('Worker replica bounds. With route bridge, ebb decides the count within them (outputMode replicas).')
@minValue(0)
param workerMinReplicas int = 0

@minValue(1)
param workerMaxReplicas int = 10

@description('KEDA pollingInterval of the worker\'s rule, seconds (Container Apps default 30). With route bridge this bounds the time from the first message to the first replica; ebb\'s own poll of the source is the trigger\'s pollingInterval key (default 5 s).')
@minValue(1)
param pollingInterval int = 15

@description('KEDA cooldownPeriod of the worker, seconds (Container Apps default 300): the wait from the last active poll to zero. With route bridge ebb already holds its own cooldownPeriod (trigger key, default 300 s) before it reports 0, and this adds to it.')
@minValue(0)
param cooldownPeriod int = 300

// ---------------------------------------------------------------------------------------------
// Built-in role definitions (IDs are the same in every tenant)
// ---------------------------------------------------------------------------------------------

var roles = {
  // Service Bus runtime counts are read through the management API; README: Data Receiver alone is
  // reported to be refused for these reads, so ebb's documented role is Data Owner.
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  storageQueueDataReader: '19e7f393-937e-4f77-808e-94535e297925'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  monitoringDataReader: 'b0d8363b-8ddd-447d-831f-62ca05bff136'
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

var createEnvironment = empty(environmentId)

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = if (createEnvironment) {
  name: '${namePrefix}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource newEnvironment 'Microsoft.App/managedEnvironments@2025-01-01' = if (createEnvironment) {
  name: '${namePrefix}-env'
  location: location
  properties: {
    // ContainerAppSystemLogs (KEDAScalerFailed, KEDAScalersStarted) land in this workspace.
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

var envId = createEnvironment ? newEnvironment.id : environmentId

// ---------------------------------------------------------------------------------------------
// ebb's identity and its roles on the sources
// ---------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-id'
  location: location
}

// The `existing` references below are only used when their name parameter is set; the
// placeholder keeps their resource IDs well-formed when it is not.
resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: empty(serviceBusNamespaceName) ? 'unset' : serviceBusNamespaceName
}

resource queueStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: empty(storageAccountName) ? 'unset' : storageAccountName
}

resource eventHubs 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: empty(eventHubNamespaceName) ? 'unset' : eventHubNamespaceName
}

resource checkpointStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: empty(checkpointStorageAccountName) ? 'unset' : checkpointStorageAccountName
}

resource monitorWorkspace 'Microsoft.Monitor/accounts@2023-04-03' existing = {
  name: empty(monitorWorkspaceName) ? 'unset' : monitorWorkspaceName
}

resource serviceBusRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(serviceBusNamespaceName)) {
  name: guid(serviceBus.id, identity.id, roles.serviceBusDataOwner)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource queueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName)) {
  name: guid(queueStorage.id, identity.id, roles.storageQueueDataReader)
  scope: queueStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource eventHubsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(eventHubNamespaceName)) {
  name: guid(eventHubs.id, identity.id, roles.eventHubsDataReceiver)
  scope: eventHubs
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource checkpointRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(checkpointStorageAccountName)) {
  name: guid(checkpointStorage.id, identity.id, roles.storageBlobDataReader)
  scope: checkpointStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource monitorRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(monitorWorkspaceName)) {
  name: guid(monitorWorkspace.id, identity.id, roles.monitoringDataReader)
  scope: monitorWorkspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringDataReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------------
// ebb
// ---------------------------------------------------------------------------------------------

// The bridge serves what GetMetrics would answer. outputMode replicas makes that the desired
// replica count, so the worker's rule uses targetValue 1; ebb clamps it to the worker's bounds.
var bridgeMetadata = union(triggerMetadata, {
  outputMode: 'replicas'
  minReplicaCount: string(workerMinReplicas)
  maxReplicaCount: string(workerMaxReplicas)
})

// ebb's access policy. ebb refuses its own identity to a namespace that no binding names, and a
// binding names what the identity may be used for: service (servicebus for Service Bus and Event
// Hubs, storage, monitor), the full host, and the entity (queue, topic/subscription, hub,
// container). The generated binding gives accessNamespaces exactly the resources that
// triggerMetadata reads with ebb's identity, with the hosts that ebb derives from the same keys
// (cloud, endpointSuffix, storageEndpointSuffix, as with KEDA).
var md = triggerMetadata
var scalerType = toLower(string(md.?scalerType ?? ''))
var cloud = toLower(string(md.?cloud ?? 'AzurePublicCloud'))
var cloudSuffixes = {
  azurepubliccloud: {
    serviceBus: 'servicebus.windows.net'
    storage: 'core.windows.net'
  }
  azureusgovernmentcloud: {
    serviceBus: 'servicebus.usgovcloudapi.net'
    storage: 'core.usgovcloudapi.net'
  }
  azurechinacloud: {
    serviceBus: 'servicebus.chinacloudapi.cn'
    storage: 'core.chinacloudapi.cn'
  }
}
var privateCloud = cloud == 'private'
var knownCloud = cloudSuffixes[?cloud] ?? cloudSuffixes.azurepubliccloud
var serviceBusSuffix = privateCloud ? string(md.?endpointSuffix ?? '') : knownCloud.serviceBus
// azure-queue's endpointSuffix is the whole queue suffix with cloud Private; azure-eventhub's
// storageEndpointSuffix is what follows `blob.`.
var queueSuffix = privateCloud ? string(md.?endpointSuffix ?? '') : 'queue.${knownCloud.storage}'
var blobSuffix = 'blob.${privateCloud ? string(md.?storageEndpointSuffix ?? '') : knownCloud.storage}'

// Service Bus entity: the queue, or topic/subscription; a useRegex trigger reads any entity,
// which only "*" covers.
var serviceBusEntity = toLower(string(md.?useRegex ?? 'false')) == 'true' ? '*' : (empty(md.?queueName ?? '') ? '${md.?topicName ?? ''}/${md.?subscriptionName ?? ''}' : md.queueName)
var serviceBusGrants = scalerType == 'azure-servicebus' && !empty(md.?namespace ?? '') ? [
  {
    service: 'servicebus'
    host: toLower('${md.namespace}.${serviceBusSuffix}')
    entity: serviceBusEntity
  }
] : []
var queueGrants = scalerType == 'azure-queue' && !empty(md.?accountName ?? '') ? [
  {
    service: 'storage'
    host: toLower('${md.accountName}.${queueSuffix}')
    entity: md.?queueName ?? '*'
  }
] : []
var eventHubGrants = scalerType == 'azure-eventhub' && !empty(md.?eventHubNamespace ?? '') ? [
  {
    service: 'servicebus'
    host: toLower('${md.eventHubNamespace}.${serviceBusSuffix}')
    entity: md.?eventHubName ?? '*'
  }
] : []
// Checkpoints: the container blobContainer, or azure-webjobs-eventhub with checkpointStrategy
// azureFunction or no blobContainer.
var checkpointContainer = toLower(string(md.?checkpointStrategy ?? '')) == 'azurefunction' || empty(md.?blobContainer ?? '') ? 'azure-webjobs-eventhub' : md.blobContainer
var checkpointGrants = scalerType == 'azure-eventhub' && !empty(md.?storageAccountName ?? '') ? [
  {
    service: 'storage'
    host: toLower('${md.storageAccountName}.${blobSuffix}')
    entity: checkpointContainer
  }
] : []
// prometheus on Azure Monitor managed Prometheus: the query endpoint's host.
var prometheusHost = toLower(first(split(first(split(last(split(string(md.?serverAddress ?? ''), '://')), '/')), ':')))
var monitorGrants = scalerType == 'prometheus' && contains(prometheusHost, '.prometheus.monitor.azure.') ? [
  {
    service: 'monitor'
    host: prometheusHost
  }
] : []

var generatedAccess = {
  bindings: [
    {
      namespaces: accessNamespaces
      identity: concat(serviceBusGrants, queueGrants, eventHubGrants, checkpointGrants, monitorGrants)
    }
  ]
}

// JSON is YAML: string() of this object is a valid ebb config file. With route external it has
// only the access section (KEDA sends the trigger metadata over gRPC).
var generatedConfig = string(union(bridge ? {
  scaledObjects: [
    {
      name: scaledObjectName
      namespace: 'default'
      metadata: bridgeMetadata
    }
  ]
} : {}, {
  access: generatedAccess
}))

var bridge = route == 'bridge'
var configText = empty(ebbConfig) ? generatedConfig : ebbConfig
var registries = empty(registryServer) ? [] : [
  {
    server: registryServer
    identity: identity.id
  }
]

resource ebb 'Microsoft.App/containerApps@2025-01-01' = {
  name: namePrefix
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: envId
    configuration: {
      activeRevisionsMode: 'Single'
      // Internal ingress, plain HTTP on port 80 inside the environment (allowInsecure: no
      // redirect to 443, which KEDA's plaintext channel cannot follow). One target port per app:
      // 8080 (HTTP/1.1) for the bridge, 9090 with transport http2 (h2c gRPC) for external.
      ingress: {
        external: false
        targetPort: bridge ? 8080 : 9090
        transport: bridge ? 'http' : 'http2'
        allowInsecure: true
      }
      // ebb's config file, with both routes: the bridge's ScaledObjects and the access section.
      secrets: [
        {
          name: 'ebb-config'
          value: configText
        }
      ]
      registries: registries
    }
    template: {
      containers: [
        {
          name: 'ebb'
          image: ebbImage
          args: [
            'serve'
            '--log-format'
            'json'
          ]
          env: [
            {
              // ebb's Azure credential: this user-assigned identity (IDENTITY_ENDPOINT is set by
              // Container Apps).
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
            {
              name: 'EBB_CONFIG'
              value: '/etc/ebb/config.yaml'
            }
          ]
          resources: {
            cpu: json('0.25')
            memory: '0.5Gi'
          }
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              periodSeconds: 10
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 8080
              }
              periodSeconds: 5
            }
          ]
          volumeMounts: [
            {
              volumeName: 'config'
              mountPath: '/etc/ebb'
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'config'
          storageType: 'Secret'
          secrets: [
            {
              secretRef: 'ebb-config'
              path: 'config.yaml'
            }
          ]
        }
      ]
      // Never zero: nothing would wake ebb (KEDA's calls do not count as HTTP scale traffic
      // while no replica runs, and a push stream cannot reach a stopped app). One replica:
      // every ebb replica would poll the sources itself.
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
    }
  }
  dependsOn: [
    // Start ebb once its roles exist (role assignments can still take minutes to apply; ebb
    // reports `authentication failed` until then and retries on its own).
    serviceBusRole
    queueRole
    eventHubsRole
    checkpointRole
    monitorRole
  ]
}

// ---------------------------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------------------------

var ebbFqdn = ebb.properties.configuration.ingress.fqdn

// Built-in metrics-api rule: GET http://<ebb>/api/v1/scaledobjects/default/<name>, field `value`
// (ebb's desired replica count). Active when value > 0.
var bridgeRule = {
  name: 'ebb-bridge'
  custom: {
    type: 'metrics-api'
    metadata: {
      url: 'http://${ebbFqdn}/api/v1/scaledobjects/default/${scaledObjectName}'
      valueLocation: 'value'
      targetValue: '1'
      activationTargetValue: '0'
    }
  }
}
// The same through the built-in prometheus rule (ebb answers /api/v1/query for this query):
// var bridgePrometheusRule = {
//   name: 'ebb-bridge'
//   custom: {
//     type: 'prometheus'
//     metadata: {
//       serverAddress: 'http://${ebbFqdn}'
//       query: 'ebb_scaledobject_value{namespace="default",name="${scaledObjectName}"}'
//       threshold: '1'
//       activationThreshold: '0'
//     }
//   }
// }

// KEDA external scaler: host:port, no scheme. Port 80 is the environment's plain-HTTP ingress,
// which forwards HTTP/2 (h2c) to ebb's port 9090.
var externalRule = {
  name: 'ebb-external'
  custom: {
    type: externalRuleType
    metadata: union(triggerMetadata, {
      scalerAddress: '${ebbFqdn}:80'
    })
  }
}

resource worker 'Microsoft.App/containerApps@2025-01-01' = {
  name: workerName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: envId
    configuration: {
      // One revision at a time: each active revision keeps its own scale rule.
      activeRevisionsMode: 'Single'
      registries: registries
    }
    template: {
      containers: [
        {
          name: 'worker'
          image: workerImage
          resources: {
            cpu: json('0.25')
            memory: '0.5Gi'
          }
        }
      ]
      scale: {
        minReplicas: workerMinReplicas
        maxReplicas: workerMaxReplicas
        pollingInterval: pollingInterval
        cooldownPeriod: cooldownPeriod
        rules: [
          bridge ? bridgeRule : externalRule
        ]
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

@description('ebb\'s internal FQDN (port 80 inside the environment).')
output ebbFqdn string = ebbFqdn

@description('Bridge URL of the declared ScaledObject (route bridge).')
output bridgeUrl string = 'http://${ebbFqdn}/api/v1/scaledobjects/default/${scaledObjectName}'

@description('scalerAddress for external rules (route external).')
output scalerAddress string = '${ebbFqdn}:80'

@description('Client ID of ebb\'s managed identity (AZURE_CLIENT_ID).')
output identityClientId string = identity.properties.clientId

@description('Principal ID of ebb\'s managed identity, for role assignments outside this resource group.')
output identityPrincipalId string = identity.properties.principalId

@description('Environment the apps run in.')
output environmentResourceId string = envId
